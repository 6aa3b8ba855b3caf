/* The dashboard's entry point (no framework, no build step): the token panel on every page, then the module of
 * the page named by <body data-page>, loaded on demand. */

import { initToken } from "./api.js";

const pages = {
  jobs: () => import("./page-jobs.js"),
  job: () => import("./page-job.js"),
  rules: () => import("./page-rules.js"),
  rule: () => import("./page-rule.js"),
  new: () => import("./page-new.js"),
};

initToken();
const load = pages[document.body.dataset.page];
if (load) load().then((page) => page.init());
