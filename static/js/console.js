/* The browser console (templates/consoles/_console.html): asks the panel for a ticket (a POST
 * of the account chooser's form, CSRF token included), opens the WebSocket the answer names,
 * sends the ticket first, then relays keystrokes (binary) and window sizes (text
 * {"resize": [cols, rows]}) to it and writes what comes back into xterm.js. The server's last
 * text message {"closed": "..."} says why the console ended: it goes into the terminal and
 * into the status line, which screen readers hear (aria-live).
 *
 * No inline script (the CSP); each tab is its own console, so two tabs are two sessions. */
(function () {
  "use strict";

  var form = document.querySelector("form[data-console]");
  if (!form || typeof window.Terminal !== "function" || !window.FitAddon) {
    return;
  }
  var status = document.getElementById("console-status");
  var box = document.getElementById("console-terminal");
  var openButton = form.querySelector("[data-console-open]");
  var closeButton = form.querySelector("[data-console-close]");
  var chooser = form.querySelector("select[name=account]");
  var reader = form.querySelector("input[name=screen_reader]");
  var encoder = new TextEncoder();

  var term = null;
  var fit = null;
  var socket = null;
  var observer = null;
  var closedReason = "";

  function say(text) {
    status.textContent = text;
  }

  function setOpen(open) {
    openButton.hidden = open;
    closeButton.hidden = !open;
    chooser.disabled = open;
    reader.disabled = open;
  }

  function send(data) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(data);
    }
  }

  // xterm's onBinary gives a string of byte values (mouse reports of some modes).
  function binaryString(data) {
    var bytes = new Uint8Array(data.length);
    for (var i = 0; i < data.length; i++) {
      bytes[i] = data.charCodeAt(i) & 0xff;
    }
    return bytes;
  }

  function makeTerminal() {
    if (term) {
      term.dispose();
    }
    box.hidden = false;
    term = new window.Terminal({
      cursorBlink: true,
      scrollback: 5000,
      screenReaderMode: reader.checked,
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace",
      fontSize: 14,
    });
    fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(box);
    fit.fit();
    term.onData(function (data) {
      send(encoder.encode(data));
    });
    term.onBinary(function (data) {
      send(binaryString(data));
    });
    term.onResize(function (size) {
      send(JSON.stringify({ resize: [size.cols, size.rows] }));
    });
    // Copy: Ctrl+Shift+C copies the selection (Ctrl+C stays the terminal's interrupt).
    // Paste: Ctrl+Shift+V is the browser's paste, which xterm takes from its own text area.
    term.attachCustomKeyEventHandler(function (event) {
      if (event.type === "keydown" && event.ctrlKey && event.shiftKey && (event.key === "C" || event.key === "c")) {
        var selection = term.getSelection();
        if (selection && navigator.clipboard) {
          navigator.clipboard.writeText(selection).then(function () {
            say("Copied the selection.");
          }, function () {
            say("The browser did not allow copying; use its menu instead.");
          });
        }
        event.preventDefault();
        return false;
      }
      return !(event.ctrlKey && event.shiftKey && (event.key === "V" || event.key === "v"));
    });
    // The terminal follows its box, and the box the window.
    if (observer) {
      observer.disconnect();
    }
    observer = new ResizeObserver(function () {
      if (term && fit) {
        fit.fit();
      }
    });
    observer.observe(box);
  }

  function finished(sentence) {
    socket = null;
    setOpen(false);
    if (term) {
      term.write("\r\n\x1b[1m" + sentence + "\x1b[0m\r\n");
      term.options.disableStdin = true;
    }
    say(sentence);
    openButton.focus();
  }

  function connect(answer) {
    makeTerminal();
    closedReason = "";
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + answer.websocket);
    socket.binaryType = "arraybuffer";
    var mine = socket;
    socket.addEventListener("open", function () {
      mine.send(JSON.stringify({ ticket: answer.ticket, cols: term.cols, rows: term.rows }));
      setOpen(true);
      say("Connected to " + box.getAttribute("data-server") + " as " + answer.account + ".");
      term.focus();
    });
    socket.addEventListener("message", function (event) {
      if (typeof event.data === "string") {
        var message;
        try {
          message = JSON.parse(event.data);
        } catch (e) {
          return;
        }
        if (message && typeof message.closed === "string") {
          closedReason = message.closed;
        }
      } else if (term) {
        term.write(new Uint8Array(event.data));
      }
    });
    socket.addEventListener("close", function () {
      if (socket === mine) {
        finished(closedReason || "The console closed.");
      }
    });
  }

  async function ticket() {
    var response = await fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    var type = response.headers.get("Content-Type") || "";
    if (type.indexOf("application/json") !== 0) {
      if (response.status === 403) {
        throw new Error("You may not open a console into this server.");
      }
      throw new Error("The console could not be opened. Reload the page and try again.");
    }
    var answer = await response.json();
    if (!response.ok) {
      throw new Error(answer.error || "The console could not be opened.");
    }
    answer.account = chooser.value;
    return answer;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (socket) {
      return;
    }
    openButton.disabled = true;
    say("Opening the console…");
    ticket().then(connect, function (error) {
      say(error.message);
    }).finally(function () {
      openButton.disabled = false;
    });
  });

  closeButton.addEventListener("click", function () {
    if (socket) {
      closedReason = "You closed the console.";
      socket.close(1000);
    }
  });
})();
