// Herald's console: progressive enhancement only. Every page works without this file;
// with it, "New destination" opens as a modal dialog over the list (the browser traps focus
// in it and closes it with Escape), the event list gets a search box and "Select all" per
// category, and a form sent from the dialog comes back in the dialog.
"use strict";

(function () {
  // The page's <main> content from an HTML answer, as nodes of this document.
  function mainOf(html) {
    const doc = new DOMParser().parseFromString(html, "text/html");
    const main = doc.querySelector("main");
    return main ? Array.from(main.childNodes, (n) => document.importNode(n, true)) : [];
  }

  function enhance(root) {
    root.querySelectorAll(".event-search").forEach((search) => {
      const fieldset = search.closest("fieldset");
      const input = search.querySelector("input");
      search.hidden = false;
      // Enter in the search box searches; it must not press the form's first button.
      input.addEventListener("keydown", (event) => {
        if (event.key === "Enter") event.preventDefault();
      });
      input.addEventListener("input", () => {
        const term = input.value.trim().toLowerCase();
        fieldset.querySelectorAll(".category").forEach((category) => {
          let shown = 0;
          category.querySelectorAll("li[data-event]").forEach((item) => {
            const match = !term || item.textContent.toLowerCase().includes(term);
            item.hidden = !match;
            if (match) shown++;
          });
          category.hidden = shown === 0;
        });
      });
    });
    root.querySelectorAll("button.select-all").forEach((button) => {
      button.hidden = false;
      button.addEventListener("click", () => {
        const boxes = Array.from(
          button.closest(".category").querySelectorAll("li:not([hidden]) input[type=checkbox]")
        );
        const all = boxes.every((box) => box.checked);
        boxes.forEach((box) => (box.checked = !all));
      });
    });
  }

  function openDialog(link) {
    let dialog = document.getElementById(link.dataset.dialog + "-dialog");
    if (!dialog) {
      dialog = document.createElement("dialog");
      dialog.id = link.dataset.dialog + "-dialog";
      dialog.className = "modal";
      dialog.setAttribute("aria-label", link.textContent.trim());
      document.body.appendChild(dialog);
    }
    return fetch(link.href, { credentials: "same-origin" }).then((answer) => {
      if (answer.redirected || !answer.ok) {
        window.location.assign(answer.url);
        return;
      }
      return answer.text().then((html) => {
        fill(dialog, html);
        dialog.showModal();
        const first = dialog.querySelector("input:not([type=hidden]), select, textarea");
        if (first) first.focus();
      });
    });
  }

  function fill(dialog, html) {
    const close = document.createElement("button");
    close.type = "button";
    close.className = "close";
    close.textContent = "Close";
    close.addEventListener("click", () => dialog.close());
    dialog.replaceChildren(close, ...mainOf(html));
    // The crumbs lead back to the page under the dialog.
    dialog.querySelectorAll(".crumbs").forEach((crumbs) => crumbs.remove());
    enhance(dialog);
    dialog.querySelectorAll("form").forEach((form) => {
      // The button that sends the form, for browsers whose submit events do not name it:
      // the last one clicked, else the first (the one Enter presses).
      let pressed = null;
      form.querySelectorAll("button[type=submit]").forEach((button) => {
        button.addEventListener("click", () => (pressed = button));
      });
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const button = event.submitter || pressed || form.querySelector("button[type=submit]");
        pressed = null;
        // The pressed button's name and value, which FormData leaves out.
        const body = new URLSearchParams(new FormData(form));
        if (button && button.name) {
          body.set(button.name, button.value);
        }
        fetch(form.getAttribute("action"), { method: "POST", body, credentials: "same-origin" })
          .then((answer) => {
            if (answer.redirected) {
              window.location.assign(answer.url);
              return;
            }
            return answer.text().then((html) => {
              if (mainOf(html).length === 0) throw new Error("not a console page");
              fill(dialog, html);
              const news = dialog.querySelector("[role=alert], #test-result");
              if (news) {
                news.tabIndex = -1;
                news.focus();
              }
            });
          })
          .catch(() => unconfirmed(dialog));
      });
    });
  }

  // The form may or may not have been acted on: say so rather than send it again.
  function unconfirmed(dialog) {
    const note = document.createElement("p");
    note.className = "error";
    note.setAttribute("role", "alert");
    note.textContent =
      "Herald's answer did not arrive, so it is not known whether this was done. " +
      "Reload the page to see the streams as they are before trying again.";
    const reload = document.createElement("a");
    reload.href = window.location.href;
    reload.textContent = "Reload";
    dialog.replaceChildren(note, reload);
    reload.focus();
  }

  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-dialog]");
    if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) {
      return;
    }
    if (typeof HTMLDialogElement !== "function") return;
    event.preventDefault();
    openDialog(link).catch(() => window.location.assign(link.href));
  });

  enhance(document);
})();
