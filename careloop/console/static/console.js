// careloop console: every action from the keyboard. Elements with data-key="k" are clicked (links, buttons,
// radio buttons) or focused (text fields) when k is pressed; "g" then a letter follows a data-go link; Enter
// submits the form marked data-enter-submits; Esc leaves a text field; "?" shows the help.
(function () {
  "use strict";
  var pendingG = false;

  function typing(el) {
    if (!el) return false;
    var tag = el.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable) return true;
    return tag === "INPUT" && ["radio", "checkbox", "submit", "button", "hidden"].indexOf(el.type) < 0;
  }

  function submit(form) {
    if (!form.reportValidity()) return;
    if (form.requestSubmit) form.requestSubmit(); else form.submit();
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var active = document.activeElement;
    if (typing(active)) {
      if (e.key === "Escape") { active.blur(); e.preventDefault(); }
      return;  // Enter in a text field submits its form the browser's own way
    }
    if (pendingG) {
      pendingG = false;
      var go = document.querySelector('[data-go="' + e.key + '"]');
      if (go) { e.preventDefault(); window.location.href = go.href; }
      return;
    }
    if (e.key === "g") { pendingG = true; return; }
    if (e.key === "?") {
      var help = document.getElementById("help");
      if (help) help.hidden = !help.hidden;
      e.preventDefault();
      return;
    }
    if (e.key === "Enter") {
      var form = document.querySelector("form[data-enter-submits]");
      if (form) { e.preventDefault(); submit(form); }
      return;
    }
    if (e.key.length !== 1) return;
    var el = document.querySelector('[data-key="' + (window.CSS && CSS.escape ? CSS.escape(e.key) : e.key) + '"]');
    if (!el) return;
    e.preventDefault();
    if (typing(el)) el.focus(); else el.click();
  });
})();
