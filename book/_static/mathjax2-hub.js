// ipywidgets 8 typesets widget labels with MathJax 2's MathJax.Hub.Queue; this book loads MathJax 3,
// which has no Hub, so each widget would throw in the browser. This gives MathJax 3 the one call used.
// Loaded before the widget manager on pages with saved widgets (_config.yml, nb_ipywidgets_js).
document.addEventListener("DOMContentLoaded", function () {
  var mathjax = window.MathJax;  // MathJax 3 itself by now: its deferred script has run
  if (!mathjax || mathjax.Hub || !mathjax.startup) return;
  mathjax.Hub = {
    Queue: function (job) {  // job: ["Typeset", MathJax.Hub, element]
      var element = Array.isArray(job) ? job[2] : undefined;
      mathjax.startup.promise = mathjax.startup.promise.then(function () {
        return mathjax.typesetPromise(element ? [element] : undefined);
      });
    },
  };
});
