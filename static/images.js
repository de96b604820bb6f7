// Small greyscale images as Plotly heatmaps, each in its own pair of hidden axes.

// Rows of pixels from one flat row (as the datasets endpoint answers); shape [h, w, 3]: each pixel [r, g, b].
export function toRows(flat, [h, w, c]) {
  const rows = [];
  for (let r = 0; r < h; r++) {
    const row = flat.slice(r * w * (c || 1), (r + 1) * w * (c || 1));
    rows.push(c ? Array.from({ length: w }, (_, i) => row.slice(i * c, (i + 1) * c)) : row);
  }
  return rows;
}

// A trace of one image on axes number N (1 -> x/y, 2 -> x2/y2, ...): a heatmap, or an RGB image for shape [h, w, 3].
export function imageTrace(flat, shape, n, name) {
  if (shape.length === 3) {
    return { type: "image", z: toRows(flat, shape), xaxis: n === 1 ? "x" : `x${n}`, yaxis: n === 1 ? "y" : `y${n}`,
      name, hovertemplate: "row %{y}, column %{x}: %{z}<extra></extra>" };
  }
  return {
    type: "heatmap", z: toRows(flat, shape), xaxis: n === 1 ? "x" : `x${n}`, yaxis: n === 1 ? "y" : `y${n}`,
    colorscale: "Greys", reversescale: true, zmin: 0, zmax: 255, showscale: false, name,
    hovertemplate: "row %{y}, column %{x}: %{z}<extra></extra>",
  };
}

// Layout entries for image axes number N inside the box [x0, x1] x [y0, y1] (paper coordinates).
export function imageAxes(n, [x0, x1], [y0, y1]) {
  const suffix = n === 1 ? "" : String(n);
  return {
    [`xaxis${suffix}`]: { domain: [x0, x1], visible: false, constrain: "domain" },
    [`yaxis${suffix}`]: { domain: [y0, y1], visible: false, autorange: "reversed", scaleanchor: `x${suffix}`, constrain: "domain" },
  };
}
