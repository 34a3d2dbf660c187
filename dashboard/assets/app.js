// flyjobs dashboard: the only script (served from the dashboard itself; no inline code, so a
// strict Content-Security-Policy holds). Confirms destructive actions and refreshes the
// overview while "live" is on.
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });
  var live = document.querySelector("[data-live]");
  if (live) {
    var key = "flyjobs-live";
    live.checked = window.localStorage.getItem(key) === "1";
    live.addEventListener("change", function () {
      window.localStorage.setItem(key, live.checked ? "1" : "0");
    });
    window.setInterval(function () {
      if (live.checked && document.visibilityState === "visible") {
        window.location.reload();
      }
    }, 5000);
  }
})();
