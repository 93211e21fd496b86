// Rewrites every <time datetime="...Z"> in the viewer's locale and time zone; the UTC
// text the server wrote stays in the title, and is all there is without JavaScript.
document.addEventListener("DOMContentLoaded", () => {
  const format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  for (const element of document.querySelectorAll("time[datetime]")) {
    const moment = new Date(element.getAttribute("datetime"));
    if (Number.isNaN(moment.getTime())) continue;
    element.title = element.textContent;
    element.textContent = format.format(moment);
  }
});

// The run page: follow train.log live over Server-Sent Events and draw the loss curves.
// The server rendered the log up to a byte offset; the stream starts there, and after a
// dropped connection the browser resumes it itself with Last-Event-ID (the byte offset).
const SVG = "http://www.w3.org/2000/svg";
const NUMBER = "([-+]?\\d+(?:\\.\\d+)?(?:[eE][-+]?\\d+)?)";
const TRAIN_LINE = new RegExp("^step:(\\d+)/\\d+ .*?\\btrain_loss:" + NUMBER);
const VAL_LINE = new RegExp("^step:(\\d+)/\\d+ .*?\\bval_loss:" + NUMBER);
const FINAL_LINE = new RegExp("^final_\\S+ .*?\\bval_loss:" + NUMBER);

function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

// Points are [step, loss] pairs; the chart is redrawn whole, which is cheap at this size.
function drawLoss(svg, curves) {
  const box = { left: 64, right: 944, top: 14, bottom: 330 };
  svg.replaceChildren();
  const final = curves.final || [];
  const all = curves.train.concat(curves.val, final);
  if (all.length === 0) {
    svg.append(svgElement("text", { x: 480, y: 180, "text-anchor": "middle", class: "note" },
                          "No loss points yet"));
    return;
  }
  const steps = all.map((p) => p[0]);
  const losses = all.map((p) => p[1]);
  let [x0, x1] = [Math.min(...steps), Math.max(...steps)];
  let [y0, y1] = [Math.min(...losses), Math.max(...losses)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const x = (step) => box.left + ((step - x0) / (x1 - x0)) * (box.right - box.left);
  const y = (loss) => box.bottom - ((loss - y0) / (y1 - y0)) * (box.bottom - box.top);
  svg.append(svgElement("path", {
    class: "axis", d: `M${box.left},${box.top}V${box.bottom}H${box.right}` }));
  for (const value of [y0, (y0 + y1) / 2, y1]) {
    svg.append(svgElement("text", { x: box.left - 6, y: y(value) + 4, "text-anchor": "end",
                                    class: "tick" }, value.toFixed(3)));
  }
  for (const value of [x0, Math.round((x0 + x1) / 2), x1]) {
    svg.append(svgElement("text", { x: x(value), y: box.bottom + 18, "text-anchor": "middle",
                                    class: "tick" }, String(value)));
  }
  svg.append(svgElement("text", { x: box.right, y: box.bottom + 30, "text-anchor": "end",
                                  class: "tick" }, "step"));
  for (const name of ["train", "val"]) {
    const points = curves[name];
    const line = svgElement("polyline", {
      class: `series ${name}`, "data-count": points.length,
      points: points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ") });
    svg.append(line);
    if (name === "val") {
      for (const p of points) {
        svg.append(svgElement("circle", { class: "dot val", cx: x(p[0]), cy: y(p[1]), r: 3 }));
      }
    }
  }
  // The scored model's final val_loss (after quantization), at the last step.
  for (const p of final) {
    const dot = svgElement("circle", { class: "dot final", cx: x(p[0]), cy: y(p[1]), r: 6,
                                       "data-final": p[1] });
    dot.append(svgElement("title", {}, `final val_loss ${p[1].toFixed(4)}`));
    svg.append(dot);
    svg.append(svgElement("text", { x: x(p[0]) - 8, y: y(p[1]) - 10, "text-anchor": "end",
                                    class: "tick final" }, `final ${p[1].toFixed(4)}`));
  }
}

function addLossPoints(curves, lines) {
  let added = false;
  for (const line of lines) {
    const final = FINAL_LINE.exec(line);
    if (final && Number.isFinite(Number(final[1]))) {
      const steps = curves.train.concat(curves.val).map((p) => p[0]);
      curves.final = [[steps.length ? Math.max(...steps) : 0, Number(final[1])]];
      added = true;
      continue;
    }
    const train = TRAIN_LINE.exec(line);
    const val = train ? null : VAL_LINE.exec(line);
    const match = train || val;
    if (!match) continue;
    const value = Number(match[2]);
    if (!Number.isFinite(value)) continue;
    curves[train ? "train" : "val"].push([Number(match[1]), value]);
    added = true;
  }
  return added;
}

// The same sentence the server writes under the chart, for the points known now.
function describeLoss(curves) {
  const last = (points) => points[points.length - 1];
  const train = last(curves.train);
  const val = last(curves.val);
  const at = (point) => `${point[1].toFixed(4)} at step ${point[0].toLocaleString("en-US")}`;
  return (train ? `Last train_loss ${at(train)}` : "No train_loss yet") + "; "
    + (val ? `last val_loss ${at(val)}` : "no val_loss yet") + ".";
}

function followLog(pre, onLines) {
  const status = document.querySelector("[data-live-status]");
  const bytes = document.querySelector(".log-bytes");
  const say = (text) => { if (status) status.textContent = text; };
  if (!pre.dataset.stream || pre.hasAttribute("data-final") || !window.EventSource) return;
  let partial = "";  // a line whose end has not arrived yet
  const source = new EventSource(pre.dataset.stream);
  source.addEventListener("open", () => say("Live: new lines appear as the worker stores them."));
  source.addEventListener("log", (event) => {
    const piece = JSON.parse(event.data);
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(piece.text);
    document.querySelector(".log-empty")?.remove();
    if (bytes) bytes.textContent = piece.next.toLocaleString("en-US");
    if (atBottom) pre.scrollTop = pre.scrollHeight;
    const lines = (partial + piece.text).split("\n");
    partial = lines.pop();
    onLines(lines);
  });
  source.addEventListener("end", (event) => {
    source.close();
    if (partial) onLines([partial]);
    const end = JSON.parse(event.data);
    say(`The run ended (${end.status}). Reload the page for its results.`);
  });
  source.addEventListener("error", () => {
    say(source.readyState === EventSource.CLOSED
      ? "Stopped following the log; reload the page to try again."
      : "Connection lost; reconnecting where the log left off…");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const pre = document.querySelector("pre.log[data-stream]");
  const figure = document.querySelector("[data-loss-chart]");
  const data = document.getElementById("loss-points");
  let curves = { train: [], val: [] };
  if (figure && data) {
    curves = JSON.parse(data.textContent);
    drawLoss(figure.querySelector("svg"), curves);
  }
  const summary = document.querySelector(".loss-summary");
  if (pre) {
    followLog(pre, (lines) => {
      if (!figure || !addLossPoints(curves, lines)) return;
      drawLoss(figure.querySelector("svg"), curves);
      if (summary) summary.textContent = describeLoss(curves);
    });
  }
});

// The submit page: choosing another preset shows its values as the blank fields' hints.
document.addEventListener("DOMContentLoaded", () => {
  const select = document.getElementById("f-preset");
  const data = document.getElementById("preset-values");
  if (!select || !data) return;
  const { defaults, presets } = JSON.parse(data.textContent);
  select.addEventListener("change", () => {
    const values = presets[select.value] || {};
    for (const element of document.querySelectorAll("[data-config]")) {
      const name = element.dataset.config;
      const shown = name in values ? values[name] : defaults[name];
      if (element.tagName === "SELECT") element.options[0].textContent = `preset: ${JSON.stringify(shown)}`;
      else element.placeholder = String(shown);
    }
  });
});

// The submit page: the cost estimate follows the fields it depends on (GET /api/estimate).
// Seconds as web/rendering.py's `duration` writes them: 45 s, 3 min 05 s, 2 h 01 min.
function duration(value) {
  const total = Math.round(value);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = total % 60;
  const pad = (n) => String(n).padStart(2, "0");
  if (hours) return `${hours} h ${pad(minutes)} min`;
  if (minutes) return `${minutes} min ${pad(seconds)} s`;
  return `${seconds} s`;
}

function describeEstimate(e) {
  const dollars = (value) => `$${value.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
  return `${dollars(e.total_usd)} for ${e.seeds} seed${e.seeds === 1 ? "" : "s"}: ${dollars(e.usd_per_seed)} and at most ` +
    `${duration(e.seconds_per_seed)} of pod time each, at ${dollars(e.price_per_hour)}/hour for ${e.gpu_count} GPU${e.gpu_count === 1 ? "" : "s"} ` +
    `(${e.price_source}).`;
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.querySelector("[data-estimate]");
  const form = section?.closest("form");
  if (!form) return;
  const text = section.querySelector("[data-estimate-text]");
  const value = (name) => (form.elements.namedItem(name)?.value || "").trim();
  let timer = null;
  let asked = 0;
  const refresh = async () => {
    const seeds = value("seeds").split(/[\s,]+/).filter(Boolean).length;
    const params = new URLSearchParams({ preset: value("preset"), provider: value("provider") || "local", seeds: String(seeds) });
    if (value("gpu_count")) params.set("gpu_count", value("gpu_count"));
    if (value("config.max_wallclock_seconds")) params.set("max_wallclock_seconds", value("config.max_wallclock_seconds"));
    const ticket = ++asked;
    try {
      const response = await fetch(`/api/estimate?${params}`, { headers: { Accept: "application/json" } });
      const body = await response.json();
      if (ticket !== asked) return;  // a newer question was asked meanwhile
      text.textContent = response.ok ? describeEstimate(body)
        : `No estimate: ${(body.detail || []).map((d) => d.msg).join("; ")}`;
    } catch {
      if (ticket === asked) text.textContent = "No estimate: the server did not answer.";
    }
  };
  const names = new Set(["preset", "provider", "seeds", "gpu_count", "config.max_wallclock_seconds"]);
  const changed = (event) => {
    if (!names.has(event.target.name)) return;
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  };
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
});
