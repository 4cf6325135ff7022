// lifeline dashboard: the live feed of new callback requests (server-sent events) and the cue
// for critical ones. Everything else works without JavaScript.
(function () {
  "use strict";
  var list = document.getElementById("callbacks");
  if (!list || !window.EventSource) return;

  var audio = null;
  // Browsers only let a page play sound after the user touched it: the first tap arms it.
  document.addEventListener("pointerdown", function () {
    if (!audio && window.AudioContext) audio = new AudioContext();
  }, { once: true });

  function beep() {
    if (!audio) return;
    var now = audio.currentTime;
    [0, 0.35, 0.7].forEach(function (t) {
      var osc = audio.createOscillator();
      var gain = audio.createGain();
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.2, now + t);
      gain.gain.exponentialRampToValueAtTime(0.001, now + t + 0.25);
      osc.connect(gain).connect(audio.destination);
      osc.start(now + t);
      osc.stop(now + t + 0.3);
    });
  }

  function cue(card) {
    var banner = document.getElementById("cue");
    if (banner) banner.hidden = false;
    if (document.title.indexOf("(!) ") !== 0) document.title = "(!) " + document.title;
    card.classList.add("fresh");
    beep();
    if (navigator.vibrate) navigator.vibrate([200, 100, 200]);
  }

  var rank = { critical: 0, urgent: 1, normal: 2 };
  var source = new EventSource("/admin/events?since=" + encodeURIComponent(list.dataset.since));
  source.addEventListener("callback", function (event) {
    var holder = document.createElement("template");
    holder.innerHTML = event.data.trim();
    var card = holder.content.firstElementChild;
    if (!card || document.querySelector('[data-id="' + card.dataset.id + '"]')) return;
    var empty = document.getElementById("empty");
    if (empty) empty.remove();
    // Keep the order: most urgent first, then oldest (a new one is the newest of its level).
    var before = null;
    var cards = list.querySelectorAll("article.callback");
    for (var i = 0; i < cards.length; i++) {
      if (rank[cards[i].dataset.urgency] > rank[card.dataset.urgency]) { before = cards[i]; break; }
    }
    list.insertBefore(card, before);
    card.classList.add("new");
    if (card.dataset.urgency === "critical") cue(card);
  });

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) document.title = document.title.replace(/^\(!\) /, "");
  });
})();
