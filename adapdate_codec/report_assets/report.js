/* adapdate eval --html: the comparison viewer. Plain ES5 in a classic script (module scripts are refused on
   file:// pages), no library. Without it the page still shows the tables, the curves and both images. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  document.documentElement.classList.add("js");

  function clamp(v) { return Math.max(0, Math.min(1, v)); }

  function setup(el, img) {
    var frame = el.querySelector(".frame"), stage = el.querySelector(".stage");
    var imgA = el.querySelector("img.a"), imgB = el.querySelector("img.b");
    var layerB = el.querySelector(".layer.b"), divider = el.querySelector(".divider");
    var split = el.querySelector("input.split");
    var left = el.querySelector("select.left"), right = el.querySelector("select.right");
    var capA = el.querySelector(".cap-a"), capB = el.querySelector(".cap-b");
    var tagA = el.querySelector(".tag.a"), tagB = el.querySelector(".tag.b");
    var zoomButtons = el.querySelectorAll(".zoom button");
    var zoom = 0;              // 0: fit; 1: 1:1; 2: 2:1 (CSS pixels per image pixel)
    var fx = 0.5, fy = 0.5;    // the point of the image the zoomed view centres on, as fractions

    function entry(key) { return key === "original" ? img.original : img.shown[key]; }

    function rightKey() {
      if (right.value === "original") return "original";
      return img.nearest[left.value][right.value];
    }

    function setCaption(p, e, extra) {
      p.textContent = "";
      var b = document.createElement("b");
      b.textContent = e.label;
      p.appendChild(b);
      p.appendChild(document.createTextNode(" " + e.caption + (extra || "")));
    }

    function show() {
      var a = entry(left.value), bKey = rightKey(), b = entry(bKey);
      imgA.src = a.src; imgA.alt = a.label;
      imgB.src = b.src; imgB.alt = b.label;
      tagA.textContent = a.label; tagB.textContent = b.label;
      setCaption(capA, a);
      var extra = "";
      if (bKey !== "original" && a.bytes) {
        var d = 100 * (b.bytes - a.bytes) / a.bytes;
        extra = " (" + (d >= 0 ? "+" : "\u2212") + Math.abs(d).toFixed(1) + " % bytes)";
      }
      setCaption(capB, b, extra);
      layout();
    }

    function layout() {
      var W = img.width, H = img.height;
      var avail = el.clientWidth || W;
      var fit = Math.min(1, avail / W, Math.max(200, window.innerHeight * 0.75) / H);
      var sw = Math.round(W * fit), sh = Math.round(H * fit);
      stage.style.width = sw + "px";
      stage.style.height = sh + "px";
      split.style.width = sw + "px";
      frame.style.width = Math.max(sw, Math.min(avail, 420)) + "px";  // room for the captions
      var s = zoom || fit;
      var tx = zoom ? -Math.max(0, W * s - sw) * fx : 0;
      var ty = zoom ? -Math.max(0, H * s - sh) * fy : 0;
      [imgA, imgB].forEach(function (im) {
        im.style.width = W + "px";
        im.style.height = H + "px";
        im.style.transform = "translate(" + tx + "px," + ty + "px) scale(" + s + ")";
      });
      stage.classList.toggle("zoomed", zoom >= 2);
      updateSplit();
    }

    function updateSplit() {
      var v = Number(split.value);
      layerB.style.clipPath = "inset(0 0 0 " + v + "%)";
      divider.style.left = v + "%";
      split.setAttribute("aria-valuetext", v + " % " + imgA.alt + ", " + (100 - v) + " % " + imgB.alt);
    }

    function setZoom(z) {
      zoom = z;
      zoomButtons.forEach(function (btn) { btn.setAttribute("aria-pressed", String(Number(btn.dataset.zoom) === z)); });
      layout();
    }

    stage.addEventListener("mousemove", function (ev) {
      if (!zoom) return;
      var r = stage.getBoundingClientRect();
      fx = clamp((ev.clientX - r.left) / r.width);
      fy = clamp((ev.clientY - r.top) / r.height);
      layout();
    });
    stage.addEventListener("keydown", function (ev) {
      var step = { ArrowLeft: [-0.05, 0], ArrowRight: [0.05, 0], ArrowUp: [0, -0.05], ArrowDown: [0, 0.05] }[ev.key];
      if (!step || !zoom) return;
      fx = clamp(fx + step[0]);
      fy = clamp(fy + step[1]);
      layout();
      ev.preventDefault();
    });
    zoomButtons.forEach(function (btn) {
      btn.addEventListener("click", function () { setZoom(Number(btn.dataset.zoom)); });
    });
    split.addEventListener("input", updateSplit);
    left.addEventListener("change", show);
    right.addEventListener("change", show);
    window.addEventListener("resize", layout);
    show();
  }

  var viewers = document.querySelectorAll(".viewer");
  for (var i = 0; i < viewers.length; i++) {
    setup(viewers[i], data.images[Number(viewers[i].dataset.image)]);
  }
})();
