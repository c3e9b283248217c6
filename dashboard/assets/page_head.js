// Inlined into every page's <head> by page_head.py, ahead of Streamlit's own scripts, after
// `const HEAD = {bundle, served}` (served: the page's path as the server saw it, less any
// server.baseUrlPath) and beside a <link rel="preload"> of the bundle.

// Where Streamlit's server is: the page's URL less the page's path. Told that, Streamlit's
// client connects at once instead of first probing <page>/_stcore/health, then the root.
const here = location.pathname;
const base = here.endsWith(HEAD.served)
  ? here.slice(0, here.length - HEAD.served.length).replace(/\/?$/, "/")
  : "";
if (base && !window.__streamlit?.BACKEND_BASE_URL) {
  window.__streamlit = { ...window.__streamlit, BACKEND_BASE_URL: location.origin + base };
}

// The charts' Plotly, loaded once per page (plot.js waits on it).
window.infermeshPlotly = () =>
  (window.infermeshPlotly.loading ??= new Promise((resolve, reject) => {
    const script = Object.assign(document.createElement("script"), { src: base + HEAD.bundle });
    script.onload = () => resolve(window.Plotly);
    script.onerror = () => reject(new Error(`could not load ${script.src}`));
    document.head.append(script);
  }));

// Run it as soon as the page's script starts on the server, while the browser would
// otherwise wait for the page's elements (Streamlit marks that moment "running").
new PerformanceObserver((marks, watch) => {
  if (!marks.getEntriesByName("running").length) return;
  watch.disconnect();
  window.infermeshPlotly();
}).observe({ type: "mark" });
