/* circuit.html (acd.export.html_page): draws the circuit embedded in #acd-data.
 *
 * Vanilla JavaScript and inline SVG, no library, no network. Everything the page shows is
 * derived from the JSON blob; the state that changes (which edges are drawn, the colouring,
 * the selected head) lives in one `view` object, and `redraw` draws from it.
 * A positional circuit (data.positional) has edges [src, dst, score, p, q] between nodes at
 * spans: the layout then holds one copy of the graph's nodes per span, side by side in span
 * order (layout.instances; a plain circuit's instance index is its node id).
 * Tests drive the page through window.acdPage (see the end of the file). */
(function () {
  "use strict";

  const SVG_NS = "http://www.w3.org/2000/svg";
  // needed / against / zero come from the data (the diagram's colours, acd.diagram)
  const COLOURS = {
    q: "#1f6fb4",
    k: "#8e44ad",
    v: "#2a9d3a",
    mlp: "#8c564b",
    logits: "#555555",
    both: "#1b7837",
    onlyThis: "#e08214",
    onlyRef: "#542788",
  };
  const FILLS = { head: "#fff2cc", kv_group: "#e8e0f5", mlp: "#d9ead3", end: "#e6e6e6" };
  const PORT_WORDS = { q: "query input", k: "key input", v: "value input", mlp: "MLP input", logits: "logits input (the final residual stream)" };
  const BOX = { w: 56, h: 36, endW: 74, endH: 24 };
  const GRID = { left: 120, col: 66, right: 16, top: 14, bottom: 14, attnRow: 80, mlpRow: 54, endRow: 58, header: 28, spanGap: 24 };
  const WIDTH = { min: 0.6, max: 5.5, flat: 1.6 };
  const LABELLED_EDGES = 10; // the largest drawn edges print their score beside them
  const TOP_TABLE_ROWS = 15;
  const SECOND_LINE_CHARS = 14; // a head box's second line (role badges) fits this many characters
  const UNSTABLE = 0.5; // kept in under half of the prompt resamples: dashed

  // --- small helpers --------------------------------------------------------------------------

  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
    if (parent) parent.appendChild(el);
    return el;
  }

  function html(tag, text, parent, className) {
    const el = document.createElement(tag);
    if (text !== undefined && text !== null) el.textContent = text;
    if (className) el.className = className;
    if (parent) parent.appendChild(el);
    return el;
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
  }

  function count(n) {
    return Number(n).toLocaleString("en-US");
  }

  function fmt(value) {
    if (value === null || value === undefined || !isFinite(value)) return "n/a";
    const text = String(Number(Number(value).toPrecision(4)));
    return value > 0 ? "+" + text : text;
  }

  function plain(value, digits) {
    if (value === null || value === undefined || !isFinite(value)) return "n/a";
    return Number(value).toFixed(digits === undefined ? 3 : digits);
  }

  function magnitude(score) {
    return score === null || !isFinite(score) ? 0 : Math.abs(score);
  }

  // --- the data, indexed ------------------------------------------------------------------

  function indexData(data) {
    const edges = data.edges.map(function (row, i) {
      const positional = row.length > 3; // [src, dst, score, p, q]
      return {
        src: row[0],
        dst: row[1],
        score: row[2],
        p: positional ? row[3] : 0,
        q: positional ? row[4] : 0,
        key: row[0] + "," + row[1] + (positional ? "," + row[3] + "," + row[4] : ""),
        rank: i < data.n_top ? i + 1 : data.extra_ranks[i - data.n_top],
        kept: false,
        inclusion: null,
      };
    });
    data.kept.forEach(function (i, j) {
      edges[i].kept = true;
      if (data.inclusion) edges[i].inclusion = data.inclusion[j];
    });
    const byKey = new Map(edges.map((e) => [e.key, e]));
    const nodeIds = new Map(data.nodes.map((n, i) => [n.name, i]));
    let reference = null;
    if (data.reference) {
      const refEdges = data.reference.edges.map(function (row) {
        const key = row[0] + "," + row[1];
        const embedded = byKey.get(key);
        return embedded || { src: row[0], dst: row[1], score: row[2], key: key, rank: null, kept: false, inclusion: null };
      });
      reference = { name: data.reference.name, edges: refEdges, keys: new Set(refEdges.map((e) => e.key)) };
    }
    return { data: data, edges: edges, byKey: byKey, nodeIds: nodeIds, reference: reference, keptCount: data.kept.length };
  }

  // --- layout: rows bottom to top, x by head index (and by span: one block per span) ---------

  function computeLayout(data) {
    const s = data.shape;
    const grouped = s.n_kv_heads !== s.n_heads;
    const parallel = s.has_mlp && s.parallel_attn_mlp;
    const nCols = s.n_heads + (grouped ? s.n_kv_heads : 0) + (parallel ? 1 : 0);
    // a plain circuit is one block without a name; a positional one has a block per span
    const spans = data.positional ? data.positional.spans : [null];
    const header = data.positional ? GRID.header : 0;
    const blockWidth = nCols * GRID.col;
    const rows = [{ kind: "input", label: "input", height: GRID.endRow }];
    for (let layer = 0; layer < s.n_layers; layer++) {
      rows.push({ kind: "attn", layer: layer, label: "layer " + layer + (parallel || !s.has_mlp ? "" : " attn"), height: GRID.attnRow });
      if (s.has_mlp && !parallel) rows.push({ kind: "mlp", layer: layer, label: "layer " + layer + " MLP", height: GRID.mlpRow });
    }
    rows.push({ kind: "logits", label: "logits", height: GRID.endRow });
    const height = GRID.top + header + GRID.bottom + rows.reduce((sum, r) => sum + r.height, 0);
    let y = height - GRID.bottom;
    for (const row of rows) {
      // bottom to top: input at the bottom, logits at the top
      row.bottom = y;
      row.y = y - row.height / 2;
      y -= row.height;
    }
    const attnRow = new Map(rows.filter((r) => r.kind === "attn").map((r) => [r.layer, r]));
    const mlpRow = new Map(rows.filter((r) => r.kind === "mlp").map((r) => [r.layer, r]));
    const blockLeft = (b) => GRID.left + b * (blockWidth + GRID.spanGap);
    const blocks = spans.map((span, b) => ({ span: span, left: blockLeft(b), width: blockWidth }));
    const instances = [];
    const positions = [];
    blocks.forEach(function (block, b) {
      const colX = (c) => block.left + c * GRID.col + GRID.col / 2;
      const middle = block.left + (s.n_heads * GRID.col) / 2;
      data.nodes.forEach(function (node, id) {
        instances.push({ node: id, span: data.positional ? b : null });
        positions.push(place(node, colX, middle));
      });
    });
    function place(node, colX, middle) {
      if (node.kind === "input") return { x: middle, y: rows[0].y, w: BOX.endW, h: BOX.endH };
      if (node.kind === "logits") return { x: middle, y: rows[rows.length - 1].y, w: BOX.endW, h: BOX.endH };
      if (node.kind === "head") return { x: colX(node.head), y: attnRow.get(node.layer).y, w: BOX.w, h: BOX.h };
      if (node.kind === "kv_group") return { x: colX(s.n_heads + node.group), y: attnRow.get(node.layer).y, w: BOX.w, h: BOX.h };
      if (parallel) return { x: colX(nCols - 1), y: attnRow.get(node.layer).y, w: BOX.w, h: BOX.endH };
      return { x: middle, y: mlpRow.get(node.layer).y, w: BOX.endW, h: BOX.endH };
    }
    const width = blockLeft(blocks.length - 1) + blockWidth + GRID.right;
    return { rows: rows, blocks: blocks, instances: instances, nNodes: data.nodes.length, positions: positions, width: width, height: height, top: GRID.top, grouped: grouped };
  }

  function instanceOf(layout, nodeId, span) {
    // the node's copy at block ``span`` (a plain circuit's spans are all 0: the node id)
    return span * layout.nNodes + nodeId;
  }

  function sourceAnchor(layout, src, span) {
    const p = layout.positions[instanceOf(layout, src, span)]; // a source's index is its node id
    return { x: p.x, y: p.y - p.h / 2 };
  }

  function portOffset(layout, kind, width) {
    // where a q/k/v input enters its box, from the box's centre
    if (layout.grouped && (kind === "k" || kind === "v")) return (kind === "k" ? -1 : 1) * (width / 4);
    if (!layout.grouped && (kind === "q" || kind === "k" || kind === "v")) return { q: -1, k: 0, v: 1 }[kind] * (width / 3);
    return 0;
  }

  function portAnchor(layout, port, span) {
    const [, nodeId, kind] = port;
    const p = layout.positions[instanceOf(layout, nodeId, span)];
    return { x: p.x + portOffset(layout, kind, p.w), y: p.y + p.h / 2 };
  }

  function edgePath(layout, ports, edge) {
    const a = sourceAnchor(layout, edge.src, edge.p);
    const b = portAnchor(layout, ports[edge.dst], edge.q);
    const bend = Math.max(18, (a.y - b.y) * 0.45);
    return { d: `M${a.x},${a.y} C${a.x},${a.y - bend} ${b.x},${b.y + bend} ${b.x},${b.y}`, mid: { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 } };
  }

  // --- the static parts: header, rows, nodes --------------------------------------------------

  function drawHeader(page) {
    const d = page.data;
    document.getElementById("acd-title").textContent = [d.title.task, d.title.model, d.title.method].join(" · ");
    const parts = [];
    if (d.level === "node") {
      parts.push(count(keptNodeCount(page)) + " of " + count(d.shape.n_src - 1) + " heads and MLPs kept (" + count(page.keptCount) + " edges between them and input)");
    } else if (d.positional) {
      const pos = d.positional;
      parts.push(count(page.keptCount) + " of " + count(pos.n_valid) + " valid positional edges kept (" + count(pos.n_plain_kept) + " of " + count(pos.n_plain_valid) + " plain edges) at the spans " + pos.spans.join(", "));
    } else {
      parts.push(count(page.keptCount) + " of " + count(d.shape.n_valid) + " valid edges kept");
    }
    const m = d.metrics;
    if ("faithfulness" in m) parts.push("faithfulness " + plain(m.faithfulness) + ("faithfulness_std" in m ? " (per-prompt std " + plain(m.faithfulness_std, 2) + ")" : ""));
    parts.push("scores measured with " + d.effect.metric);
    parts.push("seed " + d.title.seed);
    if (d.title.created) parts.push("created " + d.title.created);
    document.getElementById("acd-subtitle").textContent = parts.join(" · ");
    document.getElementById("acd-trust").textContent = d.trust ? "trust report: " + d.trust : "";
    const embedded = d.edges.length;
    document.getElementById("acd-embedded").textContent =
      "This page holds " + count(embedded) + " of the graph's " + count(validCount(page)) +
      " valid " + edgeUnit(page) + ": the " + count(d.n_top) + " of largest |score|" +
      (embedded > d.n_top ? " and the " + count(embedded - d.n_top) + " kept edges ranked below them" : "") +
      "; the slider ranges over them.";
  }

  function validCount(page) {
    const d = page.data;
    return d.positional ? d.positional.n_valid : d.shape.n_valid;
  }

  function edgeUnit(page) {
    return page.data.positional ? "positional edges" : "edges";
  }

  function keptNodeCount(page) {
    // a node-level circuit's heads and MLPs: the sources of its edges but input (always kept)
    const used = new Set();
    for (const i of page.data.kept) if (page.edges[i].src !== 0) used.add(page.edges[i].src);
    return used.size;
  }

  function drawFrame(page, root) {
    const layout = page.layout;
    root.setAttribute("viewBox", `0 0 ${layout.width} ${layout.height}`);
    root.setAttribute("width", layout.width);
    root.setAttribute("height", layout.height);
    // a small graph may grow up to 1.8 times its size to fill the panel; a large one shrinks
    root.style.width = "100%";
    root.style.maxWidth = Math.round(layout.width * 1.8) + "px";
    const bands = svg("g", { class: "acd-rows" }, root);
    for (const row of layout.rows) {
      if (row.kind === "attn") svg("rect", { class: "acd-row-band", x: 0, y: row.y - row.height / 2 + 4, width: layout.width, height: row.height - 8 }, bands);
      const label = svg("text", { class: "acd-row-label", x: 8, y: row.y + 4 }, bands);
      label.textContent = row.label;
    }
    if (page.data.positional) drawSpanColumns(layout, bands); // over the row bands
    page.els.edges = svg("g", { id: "acd-edges" }, root);
    page.els.hits = svg("g", { id: "acd-hits" }, root);
    page.els.nodes = svg("g", { id: "acd-nodes" }, root);
    page.els.labels = svg("g", { id: "acd-edge-labels" }, root);
    page.els.nodeGroups = layout.instances.map((instance, id) => drawNode(page, instance, id));
  }

  function drawSpanColumns(layout, parent) {
    // a positional circuit: each span's block a column with the span's name on top
    for (const block of layout.blocks) {
      const x = block.left - GRID.spanGap / 2 + 2;
      svg("rect", { class: "acd-span-column", x: x, y: layout.top, width: block.width + GRID.spanGap - 4, height: layout.height - layout.top - GRID.bottom / 2, rx: 6 }, parent);
      const label = svg("text", { class: "acd-span-label", x: block.left + block.width / 2, y: layout.top + 18 }, parent);
      label.textContent = block.span;
    }
  }

  function drawNode(page, instance, id) {
    const node = page.data.nodes[instance.node];
    const p = page.layout.positions[id];
    const kind = node.kind === "head" ? "acd-head" : "acd-" + node.kind;
    const attrs = { class: "acd-node " + kind, "data-node": id, transform: `translate(${p.x},${p.y})` };
    if (instance.span !== null) attrs["data-span"] = page.data.positional.spans[instance.span];
    const g = svg("g", attrs, page.els.nodes);
    const left = -p.w / 2;
    const top = -p.h / 2;
    if (node.kind === "input" || node.kind === "logits") {
      svg("ellipse", { cx: 0, cy: 0, rx: p.w / 2, ry: p.h / 2, fill: FILLS.end }, g);
    } else {
      const fill = FILLS[node.kind] || FILLS.end;
      svg("rect", { x: left, y: top, width: p.w, height: p.h, rx: node.kind === "mlp" ? 6 : 2, fill: fill }, g);
    }
    const isBox = node.kind === "head" || node.kind === "kv_group";
    const name = svg("text", { class: "acd-name", x: 0, y: isBox ? top + 11 : 4 }, g);
    name.textContent = node.kind === "kv_group" ? node.name + " kv" : node.name;
    const second = secondLine(page, node);
    if (second && isBox) {
      const line = { class: "acd-second", x: 0, y: top + 21 };
      // a long line is squeezed into the box rather than cut, so every badge stays readable
      if (second.length > SECOND_LINE_CHARS) Object.assign(line, { textLength: p.w - 6, lengthAdjust: "spacingAndGlyphs" });
      svg("text", line, g).textContent = second;
    } else if (second) {
      name.textContent = node.name + " " + second;
    }
    if (isBox) {
      for (const port of nodePorts(page, node)) {
        svg("text", { class: "acd-port", x: portOffset(page.layout, port, p.w), y: p.h / 2 - 3 }, g).textContent = port;
      }
    }
    return g;
  }

  function nodePorts(page, node) {
    if (node.kind === "kv_group") return ["k", "v"];
    return page.layout.grouped ? ["q"] : ["q", "k", "v"];
  }

  function secondLine(page, node) {
    // node level: the kept nodes' scores; heads: their role badges
    const score = page.data.level === "node" ? page.data.node_scores[node.name] : undefined;
    const badges = (page.data.badges[node.name] || []).join(" ");
    const text = [score === undefined ? "" : fmt(score), badges].filter(Boolean).join(" ");
    // beyond what squeezing keeps legible the line is cut (the tooltip has every badge)
    const most = 2 * SECOND_LINE_CHARS - 4;
    return text.length > most ? text.slice(0, most - 1) + "…" : text;
  }

  // --- what is drawn: the saved circuit or the top k, with the reference ----------------------

  function drawnItems(page) {
    const view = page.view;
    const base = view.mode === "circuit" ? page.data.kept.map((i) => page.edges[i]) : page.edges.slice(0, view.k);
    const overlay = view.overlay && page.reference;
    const items = base.map((e) => ({ edge: e, category: overlay ? (page.reference.keys.has(e.key) ? "both" : "onlyThis") : null }));
    if (overlay) {
      const drawn = new Set(base.map((e) => e.key));
      for (const e of page.reference.edges) if (!drawn.has(e.key)) items.push({ edge: e, category: "onlyRef" });
    }
    return items;
  }

  function effectOf(page, score) {
    if (score === null || !isFinite(score) || score === 0) return "zero";
    return Math.sign(score) === page.data.effect.needed_sign ? "needed" : "against";
  }

  function edgeStyle(page, item, largest) {
    const e = item.edge;
    let colour;
    if (item.category) colour = COLOURS[item.category];
    else if (page.view.colour === "port") colour = COLOURS[page.data.ports[e.dst][2]];
    else colour = COLOURS[effectOf(page, e.score)];
    const width = largest > 0 ? WIDTH.min + ((WIDTH.max - WIDTH.min) * magnitude(e.score)) / largest : WIDTH.flat;
    let dash = null;
    if (item.category === "onlyRef") dash = "6 4";
    else if (!item.category && e.inclusion !== null && e.inclusion < UNSTABLE) dash = "4 3";
    return { colour: colour, width: item.category ? Math.max(width, 1.2) : width, dash: dash };
  }

  function drawEdges(page) {
    const items = drawnItems(page);
    page.drawn = new Map(items.map((item) => [item.edge.key, item]));
    const largest = items.reduce((m, item) => Math.max(m, magnitude(item.edge.score)), 0);
    // weakest first, so the strongest lie on top
    const order = items.slice().sort((a, b) => magnitude(a.edge.score) - magnitude(b.edge.score));
    const edgeLayer = document.createDocumentFragment();
    const hitLayer = document.createDocumentFragment();
    for (const item of order) {
      const path = edgePath(page.layout, page.data.ports, item.edge);
      const style = edgeStyle(page, item, largest);
      const attrs = { class: "acd-edge" + (item.category ? " acd-" + item.category : ""), d: path.d, stroke: style.colour, "stroke-width": style.width.toFixed(2), "data-key": item.edge.key };
      if (style.dash) attrs["stroke-dasharray"] = style.dash;
      svg("path", attrs, edgeLayer);
      svg("path", { class: "acd-hit", d: path.d, "data-key": item.edge.key }, hitLayer);
      item.mid = path.mid;
    }
    clear(page.els.edges);
    clear(page.els.hits);
    page.els.edges.appendChild(edgeLayer);
    page.els.hits.appendChild(hitLayer);
    drawEdgeLabels(page, order);
    markNodes(page, items);
    return { items: items, largest: largest };
  }

  function drawEdgeLabels(page, ascending) {
    // The largest first; a label that would cover a node or an earlier label moves up or
    // down, or is left out (the table of largest edges lists them all).
    clear(page.els.labels);
    const largest = ascending.filter((item) => magnitude(item.edge.score) > 0).slice(-LABELLED_EDGES).reverse();
    const placed = page.layout.positions.map((p) => ({ x: p.x - p.w / 2, y: p.y + p.h / 2, w: p.w, h: p.h }));
    for (const item of largest) {
      const text = fmt(item.edge.score);
      const box = { x: item.mid.x + 3, w: 6 * text.length, h: 11 };
      const y = [0, -14, 14, -28, 28, -42, 42].map((dy) => item.mid.y + dy).find((y0) => !placed.some((p) => overlaps(p, box, y0)));
      if (y === undefined) continue;
      placed.push({ x: box.x, y: y, w: box.w, h: box.h });
      const label = svg("text", { class: "acd-edge-label", x: box.x, y: y, fill: edgeStyle(page, item, 1).colour }, page.els.labels);
      label.textContent = text;
    }
  }

  function overlaps(p, box, y) {
    return box.x < p.x + p.w && p.x < box.x + box.w && y - box.h < p.y && p.y - p.h < y;
  }

  function markNodes(page, items) {
    const used = new Set();
    const layout = page.layout;
    for (const item of items) {
      used.add(instanceOf(layout, item.edge.src, item.edge.p));
      used.add(instanceOf(layout, page.data.ports[item.edge.dst][1], item.edge.q));
    }
    page.els.nodeGroups.forEach(function (g, id) {
      g.classList.toggle("acd-faint", !used.has(id));
      g.classList.toggle("acd-selected", page.data.nodes[layout.instances[id].node].name === page.view.head);
    });
  }

  // --- legend, size readout, top edges --------------------------------------------------------

  function legendRow(parent, colour, text, dashed) {
    const row = html("div", null, parent, "acd-legend-row");
    const swatch = html("span", null, row, "acd-swatch" + (dashed ? " acd-dashed" : ""));
    swatch.style.borderTopColor = colour;
    html("span", text, row);
    return row;
  }

  function drawLegend(page, drawn) {
    const box = document.getElementById("acd-legend");
    clear(box);
    html("h2", "Legend", box);
    const metric = page.data.effect.metric;
    if (page.view.overlay && page.reference) {
      const counts = categoryCounts(drawn.items);
      html("p", "Comparison with " + page.reference.name + ":", box);
      legendRow(box, COLOURS.both, "in both: " + count(counts.both) + " edges (solid green)").id = "acd-count-both";
      legendRow(box, COLOURS.onlyThis, "only in this circuit: " + count(counts.onlyThis) + " edges (solid orange)").id = "acd-count-this";
      legendRow(box, COLOURS.onlyRef, "only in " + page.reference.name + ": " + count(counts.onlyRef) + " edges (dashed purple)", true).id = "acd-count-ref";
      html("p", "Untick “overlay the reference” to colour the edges by their effect again.", box, "acd-note");
    } else if (page.view.colour === "port") {
      html("p", "Edge colour: the input the edge enters.", box);
      for (const kind of ["q", "k", "v", "mlp", "logits"]) legendRow(box, COLOURS[kind], kind + ": " + PORT_WORDS[kind]);
    } else {
      effectLegend(page, box, metric);
    }
    const widest = drawn.largest > 0 ? "width ∝ |score| (widest " + fmt(drawn.largest) + "); the " + LABELLED_EDGES + " largest drawn edges print their score beside them where there is room, and the table below lists the largest." : "all drawn edges score 0: equal widths.";
    html("p", widest, box);
    if (!page.view.overlay && drawn.items.some((item) => item.edge.inclusion !== null && item.edge.inclusion < UNSTABLE)) {
      legendRow(box, "#555", "dashed: kept in under " + UNSTABLE * 100 + " % of the trust report's prompt resamples", true);
    }
    const ports = page.layout.grouped
      ? "Heads have a q cell (query input); the k, v cells of a key/value group box (a{l}.g{g} kv) are the key and value inputs its heads share."
      : "The q, k, v cells along the bottom of a head are its query, key and value inputs: edges enter there.";
    html("p", ports + " Green boxes are MLPs; faint nodes are not in the drawn circuit. Hover an edge or node for details; click a head for its attention pattern.", box, "acd-note");
    if (page.data.positional) {
      html("p", "Columns are the prompt's spans (" + page.data.positional.spans.join(", ") + "), each with a copy of every node: a node acts at the positions of its column. MLP, query and logits edges stay in their column; a k/v edge runs from the column of the key positions to the column of the queries that read them. The slider ranks positional edges.", box, "acd-note").id = "acd-span-note";
    }
  }

  function effectLegend(page, box, metric) {
    const lower = page.data.effect.direction === "lower";
    html("p", "Edge colour: what removing the edge (patching it) does to " + metric + ".", box);
    const neededSign = lower ? "score > 0" : "score < 0";
    const againstSign = lower ? "score < 0" : "score > 0";
    legendRow(box, COLOURS.needed, lower
      ? "needed: removing it raises " + metric + " (the output moves away from the full model's), so the behaviour relies on it (" + neededSign + ")"
      : "needed: removing it lowers " + metric + ", so the behaviour relies on it (" + neededSign + ")");
    legendRow(box, COLOURS.against, lower
      ? "works against the behaviour: removing it lowers " + metric + " (" + againstSign + ")"
      : "works against the behaviour: removing it raises " + metric + " (" + againstSign + ")");
    legendRow(box, COLOURS.zero, "no measured effect (score 0)");
    html("p", "The colour says what removing the edge does, not whether it excites or inhibits its destination. circuit.svg uses the same colours.", box, "acd-note");
    if (!page.data.effect.known) html("p", "The file does not record the scores' metric: read as a task metric (higher is better, e.g. logit difference).", box, "acd-note");
  }

  function categoryCounts(items) {
    const counts = { both: 0, onlyThis: 0, onlyRef: 0 };
    for (const item of items) if (item.category) counts[item.category] += 1;
    return counts;
  }

  function drawSize(page) {
    const d = page.data;
    const view = page.view;
    const unit = edgeUnit(page);
    const saved = d.level === "node" ? count(keptNodeCount(page)) + " heads and MLPs, " + count(page.keptCount) + " edges" : count(page.keptCount) + " " + unit;
    const size = document.getElementById("acd-size");
    size.textContent = view.mode === "circuit" ? "the saved circuit: " + saved : "the top " + count(view.k) + " " + unit + " by |score| (saved circuit: " + saved + ")";
    const curve = document.getElementById("acd-curve");
    const parts = [];
    if (view.mode === "circuit" && "faithfulness" in d.metrics) parts.push("faithfulness of the saved circuit: " + plain(d.metrics.faithfulness));
    parts.push(curveText(page, view.mode === "circuit" ? page.keptCount : view.k));
    curve.textContent = parts.filter(Boolean).join(" · ");
  }

  function curveText(page, k) {
    const curve = page.data.curve;
    if (!curve) return page.view.mode === "circuit" ? "" : "faithfulness not measured at this size (give a curve: acd render CIRCUIT --format html --curve FILE.json)";
    const method = curve.method ? "acd curve, " + curve.method + ", " : "acd curve, ";
    if (curve.level === "node") {
      const points = curve.n_edges.map((n, i) => count(n) + " → " + plain(curve.faithfulness[i])).join(", ");
      return "node curve (" + method + "nodes kept → faithfulness): " + points;
    }
    let best = 0;
    curve.n_edges.forEach(function (n, i) {
      if (Math.abs(n - k) < Math.abs(curve.n_edges[best] - k)) best = i;
    });
    const unit = edgeUnit(page);
    return "faithfulness " + plain(curve.faithfulness[best]) + ", measured at " + count(curve.n_edges[best]) + " " + unit + " (" + method + "top " + unit + " by |score|)";
  }

  function drawTopTable(page, drawn) {
    const box = document.getElementById("acd-top");
    clear(box);
    html("h2", "Largest drawn edges", box);
    const rows = drawn.items.filter((item) => magnitude(item.edge.score) > 0).sort((a, b) => magnitude(b.edge.score) - magnitude(a.edge.score)).slice(0, TOP_TABLE_ROWS);
    if (!rows.length) {
      html("p", drawn.items.length ? "No drawn edge has a score other than 0." : "No edges drawn.", box, "acd-note");
      return;
    }
    const table = html("table", null, box, "acd-table");
    const head = html("tr", null, table);
    for (const title of ["rank", "edge", "score", "effect"]) html("th", title, head);
    for (const item of rows) {
      const e = item.edge;
      const tr = html("tr", null, table);
      html("td", e.rank === null ? "–" : count(e.rank), tr, "acd-num");
      html("td", edgeName(page, e), tr);
      html("td", fmt(e.score), tr, "acd-num");
      html("td", { needed: "needed", against: "against", zero: "none" }[effectOf(page, e.score)], tr);
    }
  }

  function edgeName(page, e) {
    const d = page.data;
    if (!d.positional) return d.nodes[e.src].name + " → " + d.ports[e.dst][0];
    const spans = d.positional.spans;
    return d.nodes[e.src].name + "@" + spans[e.p] + " → " + d.ports[e.dst][0] + "@" + spans[e.q];
  }

  function spanLine(page, e) {
    // what a positional edge carries, in words (summary.md says the same)
    const spans = page.data.positional.spans;
    const port = page.data.ports[e.dst];
    const source = page.data.nodes[e.src].name;
    if (port[2] === "k" || port[2] === "v") {
      const input = port[2] === "k" ? "keys" : "values";
      return "spans: " + source + "'s output at the " + spans[e.p] + " positions, in the " + input + " that the " + spans[e.q] + " queries of " + page.data.nodes[port[1]].name + " attend to";
    }
    return "span: " + spans[e.p] + " (" + source + "'s output there, read at the same positions)";
  }

  // --- tooltip ---------------------------------------------------------------------------------

  function edgeTip(page, key) {
    const item = page.drawn.get(key);
    if (!item) return null;
    const e = item.edge;
    const d = page.data;
    const effect = effectOf(page, e.score);
    const effectWord = { needed: "needed: removing it " + (d.effect.direction === "lower" ? "raises " : "lowers ") + d.effect.metric, against: "works against the behaviour", zero: "no measured effect" }[effect];
    const port = d.ports[e.dst];
    const lines = [
      "score " + fmt(e.score) + " (" + effectWord + ")",
      e.rank === null ? "rank: not among the embedded edges" : "rank " + count(e.rank) + " of " + count(validCount(page)) + " valid " + edgeUnit(page) + " by |score|",
      "port: " + port[2] + ", the " + PORT_WORDS[port[2]] + (port[2] === "logits" ? "" : " of " + d.nodes[port[1]].name),
    ];
    if (d.positional) lines.push(spanLine(page, e));
    if (e.inclusion !== null) lines.push("inclusion: " + (d.positional ? "its plain edge " : "") + "kept in " + Math.round(e.inclusion * 100) + " % of the prompt resamples");
    lines.push(e.kept ? "in the saved circuit" : "not in the saved circuit");
    if (item.category) lines.push({ both: "in both circuits", onlyThis: "only in this circuit", onlyRef: "only in " + page.reference.name }[item.category]);
    return { title: edgeName(page, e), lines: lines };
  }

  function nodeTip(page, id) {
    const d = page.data;
    const instance = page.layout.instances[id];
    const node = d.nodes[instance.node];
    const words = {
      input: "the token and position embeddings",
      logits: "the final residual stream, read by the unembedding",
      head: "attention head " + node.head + " of layer " + node.layer,
      kv_group: "key/value group " + node.group + " of layer " + node.layer + ": the key and value inputs its heads share",
      mlp: "the MLP of layer " + node.layer,
    };
    const lines = [words[node.kind]];
    const span = instance.span === null ? null : d.positional.spans[instance.span];
    if (span !== null) lines.push("at the positions of span " + span);
    if (node.name in d.node_scores) lines.push("node score " + fmt(d.node_scores[node.name]) + " (the effect of removing all its outputs)");
    const roles = d.roles[node.name];
    if (roles && Object.keys(roles).length) {
      lines.push("role scores: " + Object.entries(roles).map(([role, v]) => role + " " + plain(v, 2)).join(", "));
    }
    const badges = d.badges[node.name];
    if (badges && badges.length) lines.push("badges: " + badges.join(", "));
    if (page.els.nodeGroups[id].classList.contains("acd-faint")) lines.push("not in the drawn circuit");
    if (node.kind === "head") lines.push("click: its attention pattern");
    return { title: span === null ? node.name : node.name + "@" + span, lines: lines };
  }

  function cellTip(page, cell) {
    const prompt = page.data.attention.prompts[page.view.prompt];
    const q = Number(cell.getAttribute("data-q"));
    const k = Number(cell.getAttribute("data-k"));
    const value = prompt.heads[page.view.head][q][k];
    return {
      title: page.view.head + ": " + plain(value, 3),
      lines: ["query " + q + " " + JSON.stringify(prompt.tokens[q]) + " attends to key " + k + " " + JSON.stringify(prompt.tokens[k])],
    };
  }

  function showTip(tip, content, event) {
    clear(tip);
    html("div", content.title, tip, "acd-tip-title");
    for (const line of content.lines) html("div", line, tip);
    tip.hidden = false;
    placeTip(tip, event);
  }

  function placeTip(tip, event) {
    const pad = 14;
    const box = tip.getBoundingClientRect();
    const x = Math.min(event.clientX + pad, window.innerWidth - box.width - 4);
    const y = event.clientY + pad + box.height > window.innerHeight ? event.clientY - box.height - pad : event.clientY + pad;
    tip.style.left = Math.max(0, x) + "px";
    tip.style.top = Math.max(0, y) + "px";
  }

  function wireTooltip(page) {
    const tip = document.getElementById("acd-tooltip");
    let hovered = null;
    function unhover() {
      if (hovered) hovered.classList.remove("acd-hover");
      hovered = null;
    }
    document.addEventListener("mouseover", function (event) {
      const target = event.target.closest ? event.target.closest(".acd-hit, .acd-node, .acd-cell") : null;
      unhover();
      if (!target) {
        tip.hidden = true;
        return;
      }
      let content = null;
      if (target.classList.contains("acd-hit")) {
        const key = target.getAttribute("data-key");
        content = edgeTip(page, key);
        hovered = page.els.edges.querySelector('.acd-edge[data-key="' + key + '"]');
        if (hovered) hovered.classList.add("acd-hover");
      } else if (target.classList.contains("acd-node")) {
        content = nodeTip(page, Number(target.getAttribute("data-node")));
      } else {
        content = cellTip(page, target);
      }
      if (content) showTip(tip, content, event);
    });
    document.addEventListener("mousemove", function (event) {
      if (!tip.hidden) placeTip(tip, event);
    });
  }

  // --- attention patterns ----------------------------------------------------------------------

  function drawPattern(page) {
    const box = document.getElementById("acd-pattern");
    clear(box);
    const head = page.view.head;
    html("h2", head ? "Attention pattern of " + head : "Attention patterns", box);
    const attention = page.data.attention;
    if (!head) {
      html("p", "Click a head to see where it attends" + (attention ? " on the saved prompts." : "."), box, "acd-note");
      return;
    }
    if (!attention || !attention.prompts.length) {
      html("p", "No attention patterns were saved with this page. acd discover saves them (attention.json beside circuit.json, which acd render CIRCUIT --format html reads); in Python, pass attention=acd.export.html_page.attention_examples(model, batch) to write_circuit_html.", box, "acd-note");
      return;
    }
    if (attention.prompts.length > 1) {
      const select = html("select", null, box);
      select.id = "acd-prompt";
      attention.prompts.forEach(function (prompt, i) {
        const option = html("option", "prompt " + (i + 1) + ": " + prompt.tokens.join(" ").slice(0, 60), select);
        option.value = String(i);
      });
      select.value = String(page.view.prompt);
      select.addEventListener("change", function () {
        page.view.prompt = Number(select.value);
        drawPattern(page);
      });
    }
    const prompt = attention.prompts[page.view.prompt];
    const rows = prompt.heads[head];
    if (!rows) {
      html("p", "No pattern of " + head + " was saved with this page (the saved heads: " + Object.keys(prompt.heads).length + ").", box, "acd-note");
      return;
    }
    drawHeatmap(box, prompt.tokens, rows);
    html("p", "Row: query position; column: key position. Darker = more attention (0 to 1). Hover a cell for its value.", box, "acd-note");
  }

  function drawHeatmap(box, tokens, rows) {
    const n = tokens.length;
    const cell = Math.max(6, Math.min(22, Math.floor(300 / Math.max(1, n))));
    const longest = tokens.reduce((m, t) => Math.max(m, t.length), 1);
    const labelSpace = Math.min(110, 10 + longest * 6);
    const width = labelSpace + n * cell + 6;
    const height = labelSpace + n * cell + 18;
    const map = svg("svg", { class: "acd-heatmap", width: width, height: height, viewBox: `0 0 ${width} ${height}` }, box);
    const cells = svg("g", {}, map);
    for (let q = 0; q < n; q++) {
      for (let k = 0; k < n; k++) {
        svg("rect", { class: "acd-cell", x: labelSpace + k * cell, y: labelSpace + q * cell, width: cell, height: cell, fill: heat(rows[q][k]), "data-q": q, "data-k": k }, cells);
      }
    }
    const font = Math.min(10, cell);
    tokens.forEach(function (token, i) {
      const rowLabel = svg("text", { class: "acd-token-q", x: labelSpace - 3, y: labelSpace + i * cell + cell / 2 + font / 3, "text-anchor": "end", "font-size": font }, map);
      rowLabel.textContent = token;
      const x = labelSpace + i * cell + cell / 2 + font / 3;
      const colLabel = svg("text", { class: "acd-token-k", x: x, y: labelSpace - 3, transform: `rotate(-60 ${x} ${labelSpace - 3})`, "font-size": font }, map);
      colLabel.textContent = token;
    });
    svg("text", { class: "acd-axis-caption", x: labelSpace, y: height - 4 }, map).textContent = "query (row) → key (column)";
  }

  function heat(value) {
    // white at 0 to dark blue at 1
    const t = Math.max(0, Math.min(1, Number(value) || 0));
    const r = Math.round(255 + (8 - 255) * t);
    const g = Math.round(255 + (48 - 255) * t);
    const b = Math.round(255 + (107 - 255) * t);
    return `rgb(${r},${g},${b})`;
  }

  // --- controls --------------------------------------------------------------------------------

  function wireControls(page) {
    const slider = document.getElementById("acd-slider");
    slider.min = "1";
    slider.max = String(Math.max(1, page.edges.length));
    slider.value = String(Math.max(1, page.keptCount));
    const ticks = document.getElementById("acd-ticks");
    html("option", null, ticks).value = String(Math.max(1, page.keptCount)); // the saved size
    slider.addEventListener("input", function () {
      setSize(page, Number(slider.value));
    });
    document.getElementById("acd-reset").addEventListener("click", function () {
      reset(page);
    });
    const colour = document.getElementById("acd-colour");
    colour.addEventListener("change", function () {
      page.view.colour = colour.value;
      redraw(page);
    });
    if (page.reference) {
      const overlay = document.getElementById("acd-overlay");
      document.getElementById("acd-overlay-label").hidden = false;
      overlay.checked = page.view.overlay;
      overlay.addEventListener("change", function () {
        page.view.overlay = overlay.checked;
        redraw(page);
      });
    }
    document.getElementById("acd-graph").addEventListener("click", function (event) {
      const target = event.target.closest ? event.target.closest(".acd-node.acd-head") : null;
      if (target) selectHead(page, page.data.nodes[page.layout.instances[Number(target.getAttribute("data-node"))].node].name);
    });
  }

  function setSize(page, k) {
    const clamped = Math.max(1, Math.min(page.edges.length, Math.round(k)));
    page.view.mode = "top";
    page.view.k = clamped;
    document.getElementById("acd-slider").value = String(clamped);
    redraw(page);
    return clamped;
  }

  function reset(page) {
    page.view.mode = "circuit";
    page.view.k = Math.max(1, page.keptCount);
    document.getElementById("acd-slider").value = String(page.view.k);
    redraw(page);
  }

  function selectHead(page, name) {
    page.view.head = name;
    page.view.prompt = 0;
    markNodes(page, [...page.drawn.values()]);
    drawPattern(page);
  }

  function redraw(page) {
    const drawn = drawEdges(page);
    drawLegend(page, drawn);
    drawSize(page);
    drawTopTable(page, drawn);
    return drawn;
  }

  // --- start -----------------------------------------------------------------------------------

  function start() {
    const data = JSON.parse(document.getElementById("acd-data").textContent);
    Object.assign(COLOURS, data.effect.colours);
    const page = indexData(data);
    page.layout = computeLayout(data);
    page.view = { mode: "circuit", k: Math.max(1, page.keptCount), colour: "effect", overlay: Boolean(page.reference), head: null, prompt: 0 };
    page.els = {};
    page.drawn = new Map();
    drawHeader(page);
    drawFrame(page, document.getElementById("acd-graph"));
    wireControls(page);
    wireTooltip(page);
    redraw(page);
    drawPattern(page);
    window.acdPage = {
      drawnEdgeCount: () => page.els.edges.querySelectorAll(".acd-edge").length,
      embeddedEdgeCount: () => page.edges.length,
      keptEdgeCount: () => page.keptCount,
      setSize: (k) => setSize(page, k),
      reset: () => reset(page),
      selectHead: (name) => selectHead(page, name),
      setColour: (mode) => {
        page.view.colour = mode;
        document.getElementById("acd-colour").value = mode;
        redraw(page);
      },
      setOverlay: (on) => {
        page.view.overlay = Boolean(on) && Boolean(page.reference);
        redraw(page);
      },
      categoryCounts: () => categoryCounts([...page.drawn.values()]),
      edgeScore: (key) => (page.drawn.has(key) ? page.drawn.get(key).edge.score : null),
      view: () => Object.assign({}, page.view),
      renderedMs: performance.now(),
    };
  }

  start();
})();
