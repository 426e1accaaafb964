// The panel's only script besides htmx: forms with data-confirm ask before they submit
// (deleting a server or an account). Kept out of the templates so no inline script is needed.
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
}, true);

// ---- Accessibility (a11y): errors take focus; tables that scroll are named regions. --------
(function () {
  // After a form comes back with errors, the page loads at its top and the error may sit far
  // below: focus the first error (a form's summary, else its first invalid field), which also
  // scrolls it into view. Without script the form's action anchor (#accounts...) still scrolls.
  function focusFirstError() {
    var first = document.querySelector("main form .error-summary, main form [aria-invalid='true']");
    if (!first) {
      return;
    }
    var details = first.closest("details");
    if (details) {
      details.open = true;
    }
    if (!first.matches("input, select, textarea, button")) {
      first.setAttribute("tabindex", "-1");
    }
    first.focus({ preventScroll: true });
    first.scrollIntoView({ block: "center" });
  }

  // A table too wide for its box scrolls alone inside its .table-wrap (panel.css); a keyboard
  // must reach that scroll, and a screen reader must hear what it is: the wrapper becomes a
  // focusable region named after the table's heading. Tables that fit get no extra tab stop.
  function label(wrap) {
    var table = wrap.querySelector("table");
    var caption = table && table.querySelector("caption");
    if (caption) {
      return caption.textContent.trim();
    }
    var node = wrap;
    while (node && node !== document.body) {
      var previous = node.previousElementSibling;
      while (previous) {
        var heading = previous.matches("h1, h2, h3, h4") ? previous : previous.querySelector("h1, h2, h3, h4");
        if (heading) {
          return heading.textContent.trim();
        }
        previous = previous.previousElementSibling;
      }
      node = node.parentElement;
    }
    return document.title;
  }

  function markScrollingTables() {
    document.querySelectorAll(".table-wrap").forEach(function (wrap) {
      if (wrap.scrollWidth > wrap.clientWidth + 1) {
        wrap.setAttribute("role", "region");
        wrap.setAttribute("tabindex", "0");
        wrap.setAttribute("aria-label", label(wrap) + " (table, scrolls sideways)");
      } else if (wrap.getAttribute("role") === "region") {
        wrap.removeAttribute("role");
        wrap.removeAttribute("tabindex");
        wrap.removeAttribute("aria-label");
      }
    });
  }

  var pending = false;
  function soon() {
    if (!pending) {
      pending = true;
      window.requestAnimationFrame(function () {
        pending = false;
        markScrollingTables();
      });
    }
  }

  document.addEventListener("DOMContentLoaded", markScrollingTables);
  // After load, not at DOMContentLoaded: a URL with an anchor (a form's action ends in
  // #accounts) makes the browser scroll there once the page has loaded and move the focus to
  // the page itself (the section is not focusable), which would undo an earlier focus.
  window.addEventListener("load", function () {
    window.requestAnimationFrame(focusFirstError);
  });
  window.addEventListener("resize", soon);
  document.addEventListener("htmx:afterSettle", soon);
})();

// The operator's bulk form (data-bulk, servers.html): its one question names the action and
// how many servers it goes to ("Stop 4 servers?"), kept up to date as boxes are ticked, and
// asked by the data-confirm handler above. Once answered, the panel's own confirmation page
// (what it shows without script) is skipped: confirmed=yes.
(function () {
  function question(form) {
    var all = form.querySelector("input[name=all]");
    var count = all && all.checked ? Number(all.getAttribute("data-count"))
      : form.querySelectorAll("input[name=server]:checked").length;
    var action = form.querySelector("select[name=action]");
    var label = action.options[action.selectedIndex].text;
    var servers = count === 1 ? " server" : " servers";
    if (count === 0) {
      form.removeAttribute("data-confirm");  // nothing chosen: the panel says so
    } else if (action.value === "delete") {
      form.setAttribute("data-confirm", "Delete " + count + servers + " and everything in " +
        (count === 1 ? "it" : "them") + "?");
    } else {
      form.setAttribute("data-confirm", label + " " + count + servers + "?");
    }
  }
  // Boxes the browser restored (back, reload) count from the start.
  Array.prototype.forEach.call(document.querySelectorAll("form[data-bulk]"), question);
  document.addEventListener("change", function (event) {
    var form = event.target.form;
    if (form && form.hasAttribute("data-bulk")) {
      question(form);
    }
  });
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute || !form.hasAttribute("data-bulk")) {
      return;
    }
    question(form);
    if (!event.defaultPrevented && form.hasAttribute("data-confirm")) {
      form.querySelector("input[name=confirmed]").value = "yes";
    }
  });
})();
