// Usage over time (templates/vservers/_usage_plots.html): each <section data-usage-url> holds
// one <figure data-plot=KEY> per plot, drawn with uPlot (vendored from npm) from the JSON of
// vservers/views/usage.py: {"window", "step", "t": [epoch s], "metrics": {key: [number|null]},
// "limits": {key: number}}. A null is a time without a sample (the server was stopped, the
// node silent): uPlot leaves the line broken there (spanGaps off), it never draws a zero.
// The limit (the plan's, or the node's capacity) is a series of its own, a dashed line.
// uPlot sets its elements' styles through the CSSOM, which the Content-Security-Policy allows;
// its own stylesheet is static/vendor/uPlot.min.css. Times are the viewer's local time
// (uPlot's default). Each figure's caption says the latest and highest value in words.
(function () {
  if (typeof uPlot === "undefined") {
    return;
  }
  var MIB = 1024 * 1024;
  var HEIGHT = 170;
  // Every few minutes, while the tab is shown, the open window is fetched again.
  var REFRESH_SECONDS = 60;

  // -- numbers for people ---------------------------------------------------------------
  function trim(value, digits) {
    var text = value.toFixed(digits);
    return text.indexOf(".") < 0 ? text : text.replace(/\.?0+$/, "");
  }
  // As Django's filesizeformat, which the rest of the panel uses: 1024-based, "MB".
  function bytes(value) {
    var units = ["bytes", "KB", "MB", "GB", "TB"];
    var i = 0;
    var size = Math.abs(value);
    while (size >= 1024 && i < units.length - 1) {
      size /= 1024;
      i++;
    }
    if (value === 0) {
      return "0";
    }
    if (i === 0) {
      return trim(value, 0) + " bytes";
    }
    return trim((value < 0 ? -1 : 1) * size, size < 10 ? 1 : 0) + " " + units[i];
  }
  var UNITS = {
    cores: function (v) { return trim(v, v < 1 ? 2 : 1) + (v === 1 ? " core" : " cores"); },
    bytes: bytes,
    rate: function (v) { return v === 0 ? "0" : bytes(v) + "/s"; },
    count: function (v) { return trim(v, v < 10 ? 1 : 0); },
  };
  var AXIS = {
    cores: function (v) { return trim(v, 2); },
    bytes: bytes,
    rate: function (v) { return v === 0 ? "0" : bytes(v) + "/s"; },
    count: function (v) { return trim(v, 1); },
  };
  // Tick steps for byte scales: powers of two of each unit (64 MB, 128 MB), not 19.1 MB.
  var BYTE_STEPS = [];
  [1, 1024, MIB, 1024 * MIB, 1024 * 1024 * MIB].forEach(function (unit) {
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512].forEach(function (m) { BYTE_STEPS.push(m * unit); });
  });

  // Time ticks in the viewer's own time zone and locale: hours and minutes, the date under
  // the first tick of each day; dates alone once a tick is a day or more.
  var DAY = 86400;
  var clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  var date = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
  function timeTicks(u, splits, axis, space, step) {
    var previous = null;
    return splits.map(function (seconds) {
      var moment = new Date(seconds * 1000);
      var day = moment.toDateString();
      var text = step >= DAY ? date.format(moment)
        : clock.format(moment) + (day !== previous ? "\n" + date.format(moment) : "");
      previous = day;
      return text;
    });
  }

  // What each figure draws: its series (metric key, label, look) and the limit's key.
  var PLOTS = {
    cpu: { unit: "cores", limit: "cpu", series: [
      { key: "cpu", label: "CPU (average)", color: "accent" },
      { key: "cpu_max", label: "CPU (peak)", color: "accent", faint: true }] },
    memory: { unit: "bytes", limit: "memory", series: [
      { key: "memory", label: "Memory (average)", color: "accent" },
      { key: "memory_max", label: "Memory (peak)", color: "accent", faint: true }] },
    disk: { unit: "bytes", limit: "disk", series: [{ key: "disk", label: "Disk used", color: "accent" }] },
    pids: { unit: "count", limit: "pids", series: [{ key: "pids", label: "Processes", color: "accent" }] },
    net: { unit: "rate", limit: null, series: [
      { key: "net_in", label: "In", color: "accent" },
      { key: "net_out", label: "Out", color: "ok" }] },
  };

  // Colours are panel.css's variables, read when a plot is drawn (light or dark scheme).
  function palette() {
    var style = getComputedStyle(document.documentElement);
    var read = function (name) { return style.getPropertyValue(name).trim(); };
    return {
      text: read("--text"), muted: read("--muted"), border: read("--border"), accent: read("--accent"),
      ok: read("--ok"), danger: read("--danger"), font: read("--font"),
    };
  }

  function faint(color) {
    // #rrggbb at 45 %: a peak line behind the average.
    return /^#[0-9a-f]{6}$/i.test(color) ? color + "73" : color;
  }

  function latestOf(values) {
    for (var i = values.length - 1; i >= 0; i--) {
      if (values[i] !== null && values[i] !== undefined) {
        return values[i];
      }
    }
    return null;
  }

  function highestOf(values) {
    var top = null;
    values.forEach(function (v) {
      if (v !== null && v !== undefined && (top === null || v > top)) {
        top = v;
      }
    });
    return top;
  }

  // -- one figure ------------------------------------------------------------------------
  function describe(plot, data, limitLabel, windowLabel) {
    var format = UNITS[plot.unit];
    var parts = [];
    plot.series.forEach(function (s) {
      if (s.faint) {
        return;
      }
      var values = data.metrics[s.key] || [];
      var latest = latestOf(values);
      var peakValues = plot.series.filter(function (o) { return o.faint; }).map(function (o) {
        return data.metrics[o.key] || [];
      })[0] || values;
      var highest = highestOf(peakValues.concat(values));
      if (latest === null) {
        parts.push(s.label + ": no samples in the last " + windowLabel);
      } else {
        parts.push(s.label + ": latest " + format(latest) + ", highest " + format(highest));
      }
    });
    var limit = limitOf(plot, data);
    if (limit !== null) {
      parts.push(limitLabel.toLowerCase() + " " + format(limit));
    }
    return parts.join("; ") + ".";
  }

  // The limit this figure draws, or null: the plan has one for each of its figures but the
  // network's; a node has a capacity for CPU, memory and disk only.
  function limitOf(plot, data) {
    var limit = plot.limit && data.limits ? data.limits[plot.limit] : null;
    return limit === undefined ? null : limit;
  }

  function options(figure, plot, data, limitLabel, width) {
    var colors = palette();
    var series = [{}];
    plot.series.forEach(function (s) {
      var color = colors[s.color];
      series.push({
        label: s.label, stroke: s.faint ? faint(color) : color, width: s.faint ? 1 : 2,
        spanGaps: false, value: function (u, v) { return v === null ? "–" : UNITS[plot.unit](v); },
        points: { show: false },
      });
    });
    if (limitOf(plot, data) !== null) {
      series.push({
        label: limitLabel, stroke: colors.danger, width: 1.5, dash: [6, 4], spanGaps: false,
        value: function (u, v) { return v === null ? "–" : UNITS[plot.unit](v); }, points: { show: false },
      });
    }
    var axisFont = "12px " + (colors.font || "sans-serif");
    var yAxis = {
      stroke: colors.muted, font: axisFont, size: 70,
      grid: { stroke: colors.border, width: 1 }, ticks: { stroke: colors.border, width: 1 },
      values: function (u, splits) { return splits.map(AXIS[plot.unit]); },
    };
    if (plot.unit === "bytes" || plot.unit === "rate") {
      yAxis.incrs = BYTE_STEPS;
    }
    return {
      width: width, height: HEIGHT, series: series,
      scales: { x: { time: true }, y: { range: function (u, min, max) {
        // From zero, to a little above the highest line (the limit included).
        var top = max > 0 ? max * 1.1 : 1;
        return [0, top];
      } } },
      axes: [
        { stroke: colors.muted, font: axisFont, grid: { stroke: colors.border, width: 1 },
          ticks: { stroke: colors.border, width: 1 }, values: timeTicks, space: 60 },
        yAxis,
      ],
      cursor: { drag: { x: false, y: false } },
      legend: { show: true },
    };
  }

  function columns(plot, data) {
    var columns = [data.t];
    plot.series.forEach(function (s) {
      columns.push(data.metrics[s.key] || data.t.map(function () { return null; }));
    });
    var limit = limitOf(plot, data);
    if (limit !== null) {
      columns.push(data.t.map(function () { return limit; }));
    }
    return columns;
  }

  // -- one section: its figures, its window buttons --------------------------------------
  function Section(section) {
    this.section = section;
    this.url = section.getAttribute("data-usage-url");
    this.limitLabel = section.getAttribute("data-limit-label") || "Limit";
    this.status = section.querySelector("[data-usage-status]");
    this.figures = Array.prototype.slice.call(section.querySelectorAll("figure[data-plot]"));
    this.data = null;
    var pressed = section.querySelector("button[data-window][aria-pressed=true]");
    this.window = pressed ? pressed.getAttribute("data-window") : "24h";
    var self = this;
    section.querySelectorAll("button[data-window]").forEach(function (button) {
      button.addEventListener("click", function () { self.choose(button.getAttribute("data-window")); });
    });
  }

  Section.prototype.windowLabel = function () {
    var button = this.section.querySelector("button[data-window='" + this.window + "']");
    return button ? button.getAttribute("data-label") : this.window;
  };

  Section.prototype.choose = function (window) {
    this.window = window;
    this.section.querySelectorAll("button[data-window]").forEach(function (button) {
      button.setAttribute("aria-pressed", button.getAttribute("data-window") === window ? "true" : "false");
    });
    this.load();
  };

  Section.prototype.load = function () {
    var self = this;
    var window = this.window;
    this.section.setAttribute("aria-busy", "true");
    return fetch(this.url + "?window=" + encodeURIComponent(window), {
      credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
    }).then(function (response) {
      if (!response.ok) {
        throw new Error("the panel answered " + response.status);
      }
      return response.json();
    }).then(function (data) {
      if (window !== self.window) {
        return;  // another button was pressed meanwhile: its answer counts
      }
      self.data = data;
      self.draw();
      self.say("Showing the last " + self.windowLabel() + ", a point every " + stepText(data.step) + ".");
      self.section.setAttribute("data-usage-shown", window);
    }).catch(function (error) {
      self.say("The usage could not be loaded (" + error.message + "); it is tried again in a minute.");
    }).then(function () {
      self.section.removeAttribute("aria-busy");
    });
  };

  Section.prototype.say = function (text) {
    if (this.status) {
      this.status.textContent = text;
    }
  };

  Section.prototype.draw = function () {
    var self = this;
    var data = this.data;
    if (!data) {
      return;
    }
    this.figures.forEach(function (figure) {
      var plot = PLOTS[figure.getAttribute("data-plot")];
      if (!plot) {
        return;
      }
      var box = figure.querySelector(".usage-canvas");
      var summary = figure.querySelector("[data-summary]");
      if (summary) {
        summary.textContent = describe(plot, data, self.limitLabel, self.windowLabel());
      }
      if (figure.uplot) {
        figure.uplot.destroy();
      }
      figure.uplot = new uPlot(options(figure, plot, data, self.limitLabel, Math.max(box.clientWidth, 200)),
        columns(plot, data), box);
    });
  };

  Section.prototype.resize = function () {
    this.figures.forEach(function (figure) {
      var box = figure.querySelector(".usage-canvas");
      if (figure.uplot && box.clientWidth) {
        figure.uplot.setSize({ width: Math.max(box.clientWidth, 200), height: HEIGHT });
      }
    });
  };

  function stepText(seconds) {
    if (seconds % 86400 === 0) {
      return seconds === 86400 ? "day" : seconds / 86400 + " days";
    }
    if (seconds % 3600 === 0) {
      return seconds === 3600 ? "hour" : seconds / 3600 + " hours";
    }
    if (seconds % 60 === 0) {
      return seconds === 60 ? "minute" : seconds / 60 + " minutes";
    }
    return seconds + " seconds";
  }

  var sections = Array.prototype.map.call(document.querySelectorAll("section[data-usage-url]"), function (s) {
    return new Section(s);
  });
  if (!sections.length) {
    return;
  }
  sections.forEach(function (s) { s.load(); });

  var pending = false;
  window.addEventListener("resize", function () {
    if (!pending) {
      pending = true;
      window.requestAnimationFrame(function () {
        pending = false;
        sections.forEach(function (s) { s.resize(); });
      });
    }
  });
  // The colours follow the system's scheme when it changes with the page open.
  if (window.matchMedia) {
    var scheme = window.matchMedia("(prefers-color-scheme: dark)");
    var redraw = function () { sections.forEach(function (s) { s.draw(); }); };
    if (scheme.addEventListener) {
      scheme.addEventListener("change", redraw);
    }
  }
  window.setInterval(function () {
    if (!document.hidden) {
      sections.forEach(function (s) { s.load(); });
    }
  }, REFRESH_SECONDS * 1000);
})();
