// Dataset page: the first training images with their labels, and the examples per class.
import { PLOT_CONFIG, api, chartText, layout, markReady, plotlyReady } from "/static/common.js";
import { imageAxes, imageTrace } from "/static/images.js";

const summary = JSON.parse(document.getElementById("dataset-data").textContent);
const COLS = 10;

async function drawImages() {
  const data = await api(`/api/datasets/${encodeURIComponent(summary.name)}/images?split=train&start=0&count=20`);
  await plotlyReady();
  const rows = Math.ceil(data.images.length / COLS);
  const traces = [], annotations = [];
  let lay = {};
  data.images.forEach((pixels, i) => {
    const col = i % COLS, row = Math.floor(i / COLS);
    const x = [col / COLS + 0.006, (col + 1) / COLS - 0.006];
    const top = 1 - row / rows - 0.09, bottom = 1 - (row + 1) / rows + 0.01;
    traces.push({ ...imageTrace(pixels, data.shape, i + 1, `image ${i}`), showlegend: false });
    lay = { ...lay, ...imageAxes(i + 1, x, [bottom, top]) };
    annotations.push({ text: `<b>${chartText(data.class_names[data.labels[i]])}</b>`, xref: "paper", yref: "paper",
      x: (x[0] + x[1]) / 2, y: top + 0.01, yanchor: "bottom", showarrow: false, font: { size: 13 } });
  });
  return Plotly.newPlot("dataset-images", traces, {
    ...lay, annotations, height: 170 * rows + 40, margin: { t: 24, r: 8, b: 8, l: 8 },
    title: { text: data.shape.length === 3 ? "label above each image (colours as stored)"
      : "label above each image (pixel values 0–255, dark is high)", font: { size: 12 } },
  }, PLOT_CONFIG);
}

function drawCounts() {
  const classes = summary.class_names.map(chartText);
  const traces = ["train", "test"].map((split, i) => ({
    type: "bar", name: `${split} (${summary[split].n})`, x: classes, y: summary[split].counts.map((c) => (100 * c) / summary[split].n),
    customdata: summary[split].counts, marker: { color: i ? "#f59e0b" : "#2563eb" },
    hovertemplate: `${split}, class %{x}: %{customdata} (%{y:.2f}%)<extra></extra>`,
  }));
  return Plotly.newPlot("dataset-counts", traces, layout("share of each class", "class", "% of the split",
    { legendTitle: "split", barmode: "group", xaxis: { type: "category" } }), PLOT_CONFIG);
}

const images = summary.kind === "images" ? drawImages() : Promise.resolve();
Promise.all([images, plotlyReady().then(drawCounts)]).then(markReady).catch((err) => console.error(err));
