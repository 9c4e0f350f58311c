// alignkit review keyboard shortcuts: number keys answer, u undo, n/p next/previous.
(function () {
  "use strict";
  function typing(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT");
  }
  function target() {
    var forms = document.querySelectorAll("form.answer");
    for (var i = 0; i < forms.length; i++) {
      if (!forms[i].querySelector(".current")) { return forms[i]; }
    }
    return forms.length ? forms[forms.length - 1] : null;
  }
  function submit(form, button) {
    if (form.dataset.sent) { return; }
    form.dataset.sent = "1";
    if (form.requestSubmit) { form.requestSubmit(button); } else { button.click(); }
  }
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target)) { return; }
    var link;
    if (ev.key === "n" || ev.key === "p") {
      link = document.getElementById(ev.key === "n" ? "next" : "prev");
      if (link) { ev.preventDefault(); window.location.assign(link.getAttribute("href")); }
      return;
    }
    if (ev.key === "u") {
      var undos = document.querySelectorAll("form.answer button.undo");
      if (undos.length) {
        var b = undos[undos.length - 1];
        ev.preventDefault(); submit(b.form, b);
      }
      return;
    }
    if (/^[1-9]$/.test(ev.key)) {
      var form = target();
      if (!form) { return; }
      var btn = form.querySelector('button[data-key="' + ev.key + '"]');
      if (btn) { ev.preventDefault(); submit(form, btn); }
    }
  });
}());
