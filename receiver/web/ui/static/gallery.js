// Live gallery: new stored images from /ui/events are put first, without reloading. Only DOM
// methods are used (no innerHTML): every text from the server is set as text, never as markup.
(function () {
  "use strict";
  var list = document.getElementById("gallery");
  if (!list || list.dataset.live !== "on" || !window.EventSource) { return; }
  var status = document.getElementById("live-status");
  var safePath = /^\/ui\/jobs\/[A-Za-z0-9_.:%-]+(\/files\/[0-9]+)?$/;
  var after = /^[0-9]+$/.test(list.dataset.after || "") ? list.dataset.after : "";
  // From the position the page was rendered at (the browser resumes by Last-Event-ID after that).
  var source = new EventSource("/ui/events" + (after ? "?after=" + after : ""));
  source.addEventListener("job.stored", function (message) {
    var data;
    try { data = JSON.parse(message.data); } catch (e) { return; }
    if (!data || !safePath.test(data.href) || document.querySelector('[data-job="' + CSS.escape(data.job_id) + '"]')) { return; }
    (data.images || []).slice().reverse().forEach(function (image) {
      if (!safePath.test(image.src)) { return; }
      var item = document.createElement("li");
      item.dataset.job = data.job_id;
      var figure = document.createElement("figure");
      var link = document.createElement("a");
      link.href = data.href;
      var img = document.createElement("img");
      img.src = image.src; img.alt = String(image.alt || ""); img.width = 160; img.height = 160;
      link.appendChild(img);
      var caption = document.createElement("figcaption");
      if (image.prompt) {
        var text = document.createElement("span");
        text.className = "caption"; text.textContent = String(image.prompt);
        caption.appendChild(text); caption.appendChild(document.createElement("br"));
      }
      if (data.provider) { caption.appendChild(document.createTextNode(String(data.provider) + " · ")); }
      var captionLink = document.createElement("a");
      captionLink.href = data.href; captionLink.textContent = String(data.job_id);
      caption.appendChild(captionLink);
      if (data.stored_at) {
        var at = document.createElement("time");
        at.dateTime = String(data.stored_at); at.textContent = String(data.stored_at);
        caption.appendChild(document.createElement("br")); caption.appendChild(at);
      }
      figure.appendChild(link); figure.appendChild(caption); item.appendChild(figure);
      list.insertBefore(item, list.firstChild);
    });
    var empty = document.getElementById("empty");
    if (empty) { empty.remove(); }
    if (status) { status.textContent = "New image from job " + data.job_id + "."; }
  });
})();
