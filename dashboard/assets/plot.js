// One Plotly chart of the dashboard (a Streamlit v2 component; plot.py mounts it). `data` is
// the figure as plotly.py writes it, {data, layout, config}, in UTF-8 JSON. Plotly itself
// comes from the page head (page_head.py), which starts loading it early.

const plotly =
  window.infermeshPlotly ??
  (() => Promise.reject(new Error("no Plotly: serve the dashboard with `infermesh dashboard`")));

// The page's charts draw one per frame, in the order they came: the first shows (and the page
// answers input) without waiting for every other chart to be drawn.
function drawn(loaded) {
  const turn = (window.infermeshCharts ?? Promise.resolve())
    .then(() => loaded)
    .then((Plotly) => new Promise((resolve) => requestAnimationFrame(() => resolve(Plotly))));
  window.infermeshCharts = turn.catch(() => undefined);
  return turn;
}

export default function ({ data, parentElement }) {
  let div = parentElement.querySelector(".infermesh-plot");
  if (!div) {
    div = document.createElement("div");
    div.className = "infermesh-plot";
    parentElement.appendChild(div);
  }
  const figure = JSON.parse(new TextDecoder().decode(data));
  let current = true;
  drawn(plotly()).then(
    (Plotly) => {
      if (!current) return; // newer data came first
      Plotly.react(div, figure);
      // Columns change width with the window and without it (the sidebar folds, say).
      if (!div.resizes) {
        let width = div.clientWidth;
        div.resizes = new ResizeObserver(() => {
          if (!div.isConnected || div.clientWidth === width) return;
          width = div.clientWidth;
          Plotly.Plots.resize(div);
        });
        div.resizes.observe(div);
      }
    },
    (error) => {
      div.textContent = `Chart not drawn: ${error.message}`;
    },
  );
  return () => {
    current = false;
    // Called before each redraw and when the element goes: only then is the div detached.
    setTimeout(() => {
      if (div.isConnected) return;
      div.resizes?.disconnect();
      window.Plotly?.purge(div);
    });
  };
}
