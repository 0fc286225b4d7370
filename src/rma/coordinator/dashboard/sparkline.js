// Small SVG line charts of a series over time: one polyline per run of known values, no library.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const SPARK_WIDTH = 100;
const SPARK_HEIGHT = 26;

function svgNode(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

// `t`: the steps' times; `lines`: [{values, cls}] drawn on one scale from 0 to `top` (at least
// `floor`), with gaps where a value is null. The first line is the chart's own: drawn on top, and
// its newest value is `data-last`.
function sparkline(name, t, lines, floor, caption) {
  const svg = svgNode("svg", {
    class: "spark", "data-series": name, viewBox: `0 0 ${SPARK_WIDTH} ${SPARK_HEIGHT}`,
    preserveAspectRatio: "none",
  });
  const known = lines.flatMap((line) => line.values.filter((v) => v !== null));
  const top = Math.max(floor, ...known);
  const first = t[0];
  const span = t.length > 1 ? t[t.length - 1] - first : 0;
  const x = (i) => (span ? ((t[i] - first) / span) * (SPARK_WIDTH - 2) + 1 : SPARK_WIDTH - 1);
  const y = (v) => SPARK_HEIGHT - 1 - (top ? (v / top) * (SPARK_HEIGHT - 2) : 0);
  for (const line of [...lines].reverse()) {
    let run = [];
    const flush = () => {
      // A lone point is drawn as a dot: a zero-length segment with round caps.
      if (run.length === 1) run.push(run[0]);
      if (run.length) svg.append(svgNode("polyline", { class: line.cls, points: run.join(" ") }));
      run = [];
    };
    line.values.forEach((v, i) => (v === null ? flush() : run.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`)));
    flush();
  }
  const values = lines[0].values.filter((v) => v !== null);
  svg.dataset.points = String(values.length);
  if (values.length) svg.dataset.last = String(values[values.length - 1]);
  const title = svgNode("title", {});
  const minutes = Math.max(1, Math.round((Date.now() / 1000 - first) / 60));
  title.textContent = t.length ? `${caption}, last ${minutes} min (scale 0 to ${Number(top.toPrecision(3))})`
    : `${caption}: no data yet`;
  svg.append(title);
  return svg;
}
