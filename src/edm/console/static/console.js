// The console's only script beside htmx: a CSV import sends the file itself as the
// request body (no multipart form), showing how much of it is uploaded; the server then
// answers with a fragment that htmx polls for the import's own progress.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-upload")) return;
  event.preventDefault();
  const input = form.querySelector("input[type=file]");
  const file = input && input.files[0];
  if (!file) return;
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(form)) {
    if (name !== "file" && name !== "csrf" && value !== "") params.append(name, value);
  }
  params.append("file", file.name);
  const bar = form.querySelector("progress");
  const status = document.getElementById(form.dataset.target);
  const button = form.querySelector("button[type=submit]");
  const request = new XMLHttpRequest();
  request.open("POST", form.action + "?" + params.toString());
  request.setRequestHeader("Content-Type", "text/csv");
  request.setRequestHeader("X-CSRF-Token", form.elements.namedItem("csrf").value);
  request.upload.addEventListener("progress", (progress) => {
    if (progress.lengthComputable) {
      bar.max = progress.total;
      bar.value = progress.loaded;
    }
  });
  request.addEventListener("load", () => {
    button.disabled = false;
    bar.hidden = true;
    status.innerHTML = request.responseText;
    htmx.process(status);
  });
  request.addEventListener("error", () => {
    button.disabled = false;
    status.textContent = "The upload failed: the server could not be reached.";
  });
  button.disabled = true;
  bar.hidden = false;
  status.textContent = "Uploading " + file.name + "…";
  request.send(file);
});
