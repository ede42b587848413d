// The upload page: drag and drop or pick files, upload with progress, and a live list of recent files.
"use strict";

const maxFileBytes = Number(document.body.dataset.maxFileBytes);
const maxFiles = Number(document.body.dataset.maxFiles);
const drop = document.getElementById("drop");
const picker = document.getElementById("files");
const inboxSelect = document.getElementById("inbox");
const progressBox = document.getElementById("progress-box");
const progress = document.getElementById("progress");
const progressLabel = document.getElementById("progress-label");
const message = document.getElementById("message");
const list = document.getElementById("recent");
const pending = new Map();  // "inbox/sha256" → the File, kept until the server confirms it

function say(text) { message.textContent = text; }

function upload(files) {
  files = Array.from(files);
  if (!files.length) return;
  if (files.length > maxFiles) return say(`At most ${maxFiles} files at once.`);
  const big = files.find((f) => f.size > maxFileBytes);
  if (big) return say(`${big.name} is over the limit of ${(maxFileBytes / 1e6).toFixed(0)} MB.`);
  say("");
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const inbox = inboxSelect.value;
  const request = new XMLHttpRequest();
  request.open("POST", "/api/upload?inbox=" + encodeURIComponent(inbox));
  request.setRequestHeader("X-CSRF-Token", srd.csrf);
  request.responseType = "json";
  progressBox.hidden = false;
  progress.value = 0;
  progressLabel.textContent = `Uploading ${files.length} file${files.length > 1 ? "s" : ""}…`;
  request.upload.onprogress = (e) => { if (e.lengthComputable) progress.value = (100 * e.loaded) / e.total; };
  request.onload = () => {
    progressBox.hidden = true;
    const body = request.response || {};
    // The server stores the parts in the order sent, and stops at the first it refuses.
    (body.stored || []).forEach((item, i) => srd.keepOriginal(`${inbox}/${item.sha256}`, files[i]));
    if (request.status >= 400) say(body.error || `The upload was refused (${request.status}).`);
    else progressLabel.textContent = "Uploaded.";
    refresh();
  };
  request.onerror = () => { progressBox.hidden = true; say("The upload failed: the connection was closed (too large?)."); };
  request.send(form);
}

function row(file) {
  const thumb = file.result_url ? srd.el("img", {className: "thumb", src: file.result_url, alt: "", loading: "lazy"})
    : srd.el("span", {className: "thumb"});
  const name = srd.el("div", {className: "name"}, srd.el("a", {href: file.page_url, textContent: file.name}));
  const info = srd.el("div", {}, name,
    srd.el("span", {className: "chip " + file.state, textContent: file.state}),
    file.reason ? srd.el("div", {className: "reason", textContent: file.reason}) : null);
  const actions = srd.el("div", {className: "actions"});
  if (file.result_url) {
    actions.append(srd.el("a", {href: file.page_url, textContent: "Compare"}),
      srd.el("a", {className: "button", href: file.result_url + "?download=1", textContent: "Download",
        ariaLabel: "Download the result of " + file.name}));
  }
  const item = srd.el("li", {}, thumb, info, actions);
  item.dataset.state = file.state;
  item.dataset.name = file.name;
  return item;
}

let shown = "";
async function refresh() {
  try {
    const [, body] = await srd.getJSON("/api/files");
    srd.showDaemon(body.daemon);
    const key = JSON.stringify(body.files);
    if (key === shown) return;  // re-rendering only on change keeps focus and scroll where they are
    shown = key;
    list.replaceChildren(...(body.files.length ? body.files.map(row)
      : [srd.el("li", {className: "empty", textContent: "Nothing yet: drop a photo above."})]));
  } catch (e) { /* the next poll tries again */ }
}

drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files); });
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); picker.click(); } });
picker.addEventListener("change", () => { upload(picker.files); picker.value = ""; });
refresh();
setInterval(refresh, 1000);
