// keyplane's console: the little a page needs beyond HTML forms.
// Served from keyplane's own origin; no inline script anywhere.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // A page showing a new key's secret was a POST's answer: from now on the
  // address bar (and a reload) is the instance's page, where the key is
  // masked, never the form that would issue another key.
  const replace = document.querySelector("[data-replace-url]");
  if (replace) {
    history.replaceState(null, "", replace.getAttribute("data-replace-url"));
  }

  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.getAttribute("data-copy"));
      const said = document.querySelector("[data-copied]");
      try {
        await navigator.clipboard.writeText(field.value);
        if (said) said.textContent = "Copied.";
      } catch {
        field.select();
        if (said) said.textContent = "Selected: press Ctrl+C (or ⌘C) to copy.";
      }
    });
  }

  for (const field of document.querySelectorAll("[data-secret]")) {
    field.addEventListener("focus", () => field.select());
  }

  const back = document.querySelector("[data-back]");
  if (back && history.length > 1) {
    back.addEventListener("click", (event) => {
      event.preventDefault();
      history.back();
    });
  }
});
