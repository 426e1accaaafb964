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
  // A live page's refresh (below) may bring a wider table.
  document.addEventListener("live:updated", soon);
})();

// -- Live pages (vservers/views/live.py) ---------------------------------------------------
// A live page names its URL and the ETag of what it shows in <body data-live-url ...>. Every
// few seconds it asks for itself again with If-None-Match: a 304 (nothing moved) costs the
// server one small query and the page nothing. A new page is parsed, and each region marked
// data-live (by id) is morphed in place with idiomorph: nodes that stay stay, so the focused
// button keeps focus, the scroll position does not move, and an opened <details> stays open.
// A region the user is typing in (a focused field, or a field changed and not yet sent) is
// left alone until the next change after that. What changed among the elements marked
// data-announce is said in the page's polite live region (#live-status).
(function () {
  var body = document.body;
  var url = body.getAttribute("data-live-url");
  if (!url || typeof Idiomorph === "undefined") {
    return;
  }
  var etag = body.getAttribute("data-live-etag");
  var seconds = Number(body.getAttribute("data-live-seconds")) || 3;
  var FIELDS = "input, textarea, select";

  function typingIn(region) {
    var active = document.activeElement;
    if (active && region.contains(active) && active.matches(FIELDS) &&
        ["hidden", "submit", "button", "reset"].indexOf(active.type) < 0) {
      return true;
    }
    var fields = region.querySelectorAll(FIELDS);
    for (var i = 0; i < fields.length; i++) {
      var field = fields[i];
      if (field.type === "hidden") {
        continue;
      }
      if (field.type === "checkbox" || field.type === "radio") {
        if (field.checked !== field.defaultChecked) {
          return true;
        }
      } else if (field.tagName === "SELECT") {
        for (var j = 0; j < field.options.length; j++) {
          if (field.options[j].selected !== field.options[j].defaultSelected) {
            return true;
          }
        }
      } else if (field.value !== field.defaultValue) {
        return true;
      }
    }
    return false;
  }

  function announcements() {
    var said = {};
    document.querySelectorAll("[data-live] [data-announce][id]").forEach(function (element) {
      said[element.id] = element.getAttribute("data-announce");
    });
    return said;
  }

  function announce(text) {
    var region = document.getElementById("live-status");
    if (!region || !text) {
      return;
    }
    // Emptied first, so that the same words said twice are heard twice.
    region.textContent = "";
    window.setTimeout(function () { region.textContent = text; }, 50);
  }

  // The user opens and closes <details>; the server's copy knows nothing of it.
  function keepOpen(name, element) {
    return !(name === "open" && element.tagName === "DETAILS");
  }

  function apply(html, newEtag) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    var before = announcements();
    var complete = true;
    document.querySelectorAll("[data-live][id]").forEach(function (region) {
      var next = fresh.getElementById(region.id);
      if (!next) {
        return;
      }
      if (typingIn(region)) {
        complete = false;
        return;
      }
      Idiomorph.morph(region, next, {
        morphStyle: "outerHTML",
        ignoreActiveValue: true,
        restoreFocus: true,
        callbacks: { beforeAttributeUpdated: keepOpen },
      });
    });
    // A region left alone is brought up to date by the next answer: keep asking with the old ETag.
    if (complete && newEtag) {
      etag = newEtag;
    }
    var after = announcements();
    var changes = [];
    Object.keys(after).forEach(function (id) {
      if (id in before && before[id] !== after[id]) {
        changes.push(after[id]);
      }
    });
    announce(changes.join(". "));
    document.dispatchEvent(new CustomEvent("live:updated", { detail: { complete: complete } }));
  }

  function poll() {
    if (document.hidden) {
      return Promise.resolve();  // a tab in the background asks again once it is shown
    }
    var headers = { "X-Live": "1" };
    if (etag) {
      headers["If-None-Match"] = etag;
    }
    return fetch(url, { headers: headers, cache: "no-store", credentials: "same-origin" }).then(function (response) {
      if (response.status === 304) {
        return;
      }
      var gone = response.headers.get("X-Live-Gone");
      if (gone) {
        window.location.assign(gone);  // the server was deleted: its list
      } else if (response.redirected) {
        window.location.assign(response.url);  // signed out: the login page, back here after
      } else if (response.ok) {
        var newEtag = response.headers.get("ETag");
        return response.text().then(function (html) { apply(html, newEtag); });
      }
      // Anything else (a restart, a 502 from the proxy): keep the page, ask again later.
    });
  }

  function loop() {
    window.setTimeout(function () {
      poll().catch(function () {}).then(loop);
    }, seconds * 1000);
  }
  loop();
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
