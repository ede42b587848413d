// One file's page: its state live, and once done a before/after slider and a download link.
"use strict";

const inbox = document.body.dataset.inbox;
const sha256 = document.body.dataset.sha256;
const slider = document.getElementById("slider");
const frame = document.querySelector(".compare-frame");
let finished = false;

slider.addEventListener("input", () => frame.style.setProperty("--pos", slider.value + "%"));

async function showResult(file) {
  const original = await srd.original(`${inbox}/${sha256}`);
  if (original) {
    document.getElementById("after").src = file.result_url;
    document.getElementById("before").src = URL.createObjectURL(original);
    document.getElementById("compare").hidden = false;
  } else {
    document.getElementById("solo-img").src = file.result_url;
    document.getElementById("solo").hidden = false;
  }
  const link = document.getElementById("download");
  link.href = file.result_url + "?download=1";
  document.getElementById("actions").hidden = false;
}

async function refresh() {
  if (finished) return;
  try {
    const [status, body] = await srd.getJSON(`/api/files/${inbox}/${sha256}`);
    srd.showDaemon(body.daemon);
    if (status === 404) {
      document.getElementById("name").textContent = "Unknown file";
      document.getElementById("state").textContent = "not found";
      return;
    }
    const file = body.file;
    document.title = "srd · " + file.name;
    document.getElementById("name").textContent = file.name;
    const state = document.getElementById("state");
    state.textContent = file.state;
    state.className = "chip " + file.state;
    document.getElementById("reason").textContent = file.reason || "";
    if (file.state === "done" && file.result_url) { finished = true; await showResult(file); }
    if (file.state === "failed") finished = true;
  } catch (e) { /* the next poll tries again */ }
}
refresh();
setInterval(refresh, 1000);
