// diffedu: keep figures legible on a phone.
// Matplotlib figures are drawn at 100 px an inch for a ~700 px column; squeezed into a 380 px phone column their
// labels shrink below 6 px. On narrow screens each output image is shown at no less than MIN_SCALE of its own
// size, and its output area scrolls sideways instead (custom.css: div.cell_output { overflow-x: auto }).
(function () {
  var MIN_SCALE = 0.6;
  var NARROW = "(max-width: 640px)";
  function fit(img) {
    var box = img.closest("div.cell_output");
    if (!box || !img.naturalWidth) return;
    if (window.matchMedia(NARROW).matches) {
      var width = Math.max(box.clientWidth, Math.min(img.naturalWidth, MIN_SCALE * img.naturalWidth));
      if (width > box.clientWidth) {
        img.style.maxWidth = "none";
        img.style.width = Math.round(width) + "px";
        img.classList.add("diffedu-scroll-figure");
        return;
      }
    }
    img.style.maxWidth = "";
    img.style.width = "";
    img.classList.remove("diffedu-scroll-figure");
  }
  function fitAll() {
    document.querySelectorAll("div.cell_output img").forEach(function (img) {
      if (img.complete) fit(img); else img.addEventListener("load", function () { fit(img); });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fitAll);
  else fitAll();
  window.addEventListener("resize", fitAll);
})();
