"use strict";
// The page: reads the model from the file's data blocks, samples as `charrnn generate` does, and
// shows the text as it is made (a chunk of characters per task, so the page paints between them).
// Test hooks: window.charrnnNext(prefix) and the fragment modes #probe=PREFIX, #bench=STEPS and
// #generate=LENGTH&seed=S&prefix=P&temperature=T, which write JSON into <pre id="probe">.
(function () {
  const { Model, softmax, draw, prng } = globalThis.charrnnModel;
  const CHUNK_MS = 12; // sampling time between two paints
  const MAX_LENGTH = 100000; // characters of one generation
  const MAX_SEED = 4294967295; // the generator (model.js prng) has 32 bits of state
  const violations = [];
  document.addEventListener("securitypolicyviolation", (e) => violations.push(e.violatedDirective));

  const meta = JSON.parse(document.getElementById("charrnn-meta").textContent);
  const model = new Model(meta, document.getElementById("charrnn-weights").textContent.trim());
  const vocab = meta.vocab; // the character of each id, null for <unk>
  const index = new Map();
  vocab.forEach((c, i) => { if (c !== null) index.set(c, i); });
  const unk = vocab.indexOf(null); // -1 without <unk>
  const $ = (id) => document.getElementById(id);

  // Text -> ids (by code point); unknown characters become <unk>, or an error without it.
  function encode(text) {
    const ids = [], unknown = new Set();
    for (const ch of text) {
      if (index.has(ch)) ids.push(index.get(ch));
      else if (unk >= 0) ids.push(unk);
      else unknown.add(ch);
    }
    if (unknown.size) throw new Error(`the model does not know ${[...unknown].map((c) => JSON.stringify(c)).join(", ")}`);
    return ids;
  }

  // The state after reading all ids but the last (which is returned as the next input).
  function warmUp(ids) {
    const state = model.begin();
    for (let i = 0; i < ids.length - 1; i++) model.step(ids[i], state);
    return { state, last: ids[ids.length - 1] };
  }

  // Next-character probabilities after exactly `prefix` from the zero state (softmax of the
  // logits, <unk> included); an empty prefix gives the training text's character frequencies.
  function next(prefix) {
    const ids = encode(prefix);
    if (!ids.length) {
      const total = meta.counts.reduce((a, b) => a + b, 0);
      return vocab.map((_, i) => (i < meta.counts.length ? meta.counts[i] / total : 0));
    }
    const { state, last } = warmUp(ids);
    return Array.from(softmax(model.step(last, state)));
  }
  window.charrnnNext = next;

  const copyState = (s) => ({ h: s.h.map((a) => a.slice()), c: s.c && s.c.map((a) => a.slice()) });

  // Sampling as `charrnn generate`: warm up on the prefix, never emit <unk>; without a prefix the
  // first character is drawn from the character frequencies. A records model generates records:
  // each starts after the delimiter and the prefix, ends at the delimiter (not before one character).
  class Sampler {
    constructor(prefix, temperature, length, seed) {
      this.prefix = prefix;
      this.temperature = temperature;
      this.remaining = length;
      this.random = prng(seed);
      this.delimiter = meta.delimiter;
      this.ids = encode(this.delimiter === null ? prefix : this.delimiter + prefix);
      this.start = this.ids.length ? warmUp(this.ids) : null;
      this.lead = prefix; // what is shown before the first generated character
      this.begin();
    }

    begin() {
      this.text = "";
      this.sent = 0; // characters of this.text already shown
      if (this.start) {
        this.state = copyState(this.start.state);
        this.last = this.start.last;
      } else {
        this.state = model.begin();
        this.last = -1; // drawn from the frequencies by the first call of next()
      }
    }

    banned() {
      const out = unk >= 0 ? [unk] : [];
      const d = this.delimiter;
      if (d !== null && this.text === "" && [...d].length === 1 && index.has(d)) out.push(index.get(d));
      return out;
    }

    // The next piece of text to show ("" when done).
    next() {
      if (this.remaining <= 0) return "";
      this.remaining--;
      let id;
      if (this.last < 0) {
        id = draw(meta.counts, this.random);
      } else {
        id = draw(softmax(model.step(this.last, this.state), this.temperature, this.banned()), this.random);
      }
      this.last = id;
      this.text += vocab[id];
      const d = this.delimiter, lead = this.lead;
      this.lead = "";
      if (d !== null && this.text.endsWith(d) && this.text.length > d.length) {
        // A record ends: its delimiter is not shown (a multi-character one, "<eos>", would be), a line break is.
        const shown = lead + this.text.slice(this.sent, this.text.length - d.length) + "\n";
        this.begin();
        this.lead = this.prefix;
        return shown;
      }
      // Characters that may still turn out to begin the delimiter wait until the next ones decide (all are
      // shown when the length runs out), as `charrnn generate` holds back what may begin a stop string.
      const safe = d === null || this.remaining <= 0 ? this.text.length : this.text.length - pending(this.text, d);
      const shown = lead + this.text.slice(this.sent, safe);
      this.sent = Math.max(this.sent, safe);
      return shown;
    }
  }

  // How many characters at the end of `text` begin `delimiter` (the longest such end, shorter than it).
  function pending(text, delimiter) {
    for (let n = Math.min(delimiter.length - 1, text.length); n > 0; n--) {
      if (text.endsWith(delimiter.slice(0, n))) return n;
    }
    return 0;
  }

  // The settings of a generation, checked: a temperature, length or seed the page cannot honour is an
  // error said on the page, not "undefined" in the output or a seed silently wrapped to 32 bits.
  function checked(settings) {
    const { temperature, length, seed } = settings;
    if (!(Number.isFinite(temperature) && temperature > 0)) {
      throw new Error(`the temperature must be a finite number > 0, got ${settings.shown?.temperature ?? temperature}`);
    }
    if (!(Number.isInteger(length) && length >= 1 && length <= MAX_LENGTH)) {
      throw new Error(`the length must be a whole number from 1 to ${MAX_LENGTH}, got ${settings.shown?.length ?? length}`);
    }
    if (!(Number.isSafeInteger(seed) && seed >= 0 && seed <= MAX_SEED)) {
      throw new Error(`the seed must be a whole number from 0 to ${MAX_SEED} (the page's generator has 32 bits), ` +
                      `got ${settings.shown?.seed ?? seed}`);
    }
    return settings;
  }

  let running = null; // the generation in progress: {sampler, stop}

  // Generate into the output box a chunk at a time; `done(stats)` is called at the end.
  function generate(prefix, temperature, length, seed, done) {
    const out = $("output");
    const t0 = performance.now();
    const sampler = new Sampler(prefix, temperature, length, seed);
    const node = document.createTextNode("");
    out.replaceChildren(node);
    const job = { stop: false, firstCharMs: null };
    running = job;
    const tick = () => {
      const until = performance.now() + CHUNK_MS;
      let piece = "";
      while (!job.stop && sampler.remaining > 0 && performance.now() < until) {
        piece += sampler.next();
        if (job.firstCharMs === null) job.firstCharMs = performance.now();
      }
      node.appendData(piece);
      if (!job.stop && sampler.remaining > 0) return void setTimeout(tick, 0);
      running = null;
      done({ text: node.data, seed, first_char_ms: job.firstCharMs, start_ms: t0, end_ms: performance.now() });
    };
    tick();
  }

  // The typed seed (checked by start), or a random one when the box is empty.
  function readSeed() {
    const typed = $("seed").value.trim();
    if (typed === "") return crypto.getRandomValues(new Uint32Array(1))[0];
    return /^\d+$/.test(typed) ? Number(typed) : NaN;
  }

  function readControls() {
    const length = Math.max(1, Math.min(MAX_LENGTH, Math.floor(Number($("length").value)) || 500));
    return { prefix: $("prefix").value, temperature: Number($("temperature").value), length, seed: readSeed(),
             shown: { seed: JSON.stringify($("seed").value) } };
  }

  // A generation with settings {prefix, temperature, length, seed}; `done(stats)` (optional) at its end.
  function start(settings, done = () => {}) {
    if (running) running.stop = true;
    const status = $("status");
    try {
      const { prefix, temperature, length, seed } = checked(settings);
      status.textContent = `generating (seed ${seed})…`;
      generate(prefix, temperature, length, seed, (s) => {
        status.textContent = `seed ${seed}: ${length} characters`;
        done(s);
      });
    } catch (e) {
      status.textContent = `Error: ${e.message}`;
      done({ error: e.message });
    }
  }

  function showCard() {
    const dl = $("card");
    for (const [label, value] of meta.card) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = label;
      dd.textContent = value;
      dl.append(dt, dd);
    }
  }

  // Whether the stylesheet applied (the CSP let it in): it sets a custom property on the body.
  const styled = () => getComputedStyle(document.body).getPropertyValue("--charrnn-styled").trim() === "1";

  // #probe=P (repeatable): the probabilities after each prefix P; #bench=N: N steps timed;
  // #generate=N&seed=S&prefix=P&temperature=T: a generation, reported when it ends. Each writes JSON
  // into <pre id="probe">.
  function runFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const probe = $("probe");
    const report = (obj) => { probe.textContent = JSON.stringify({ ...obj, styled: styled(), violations }); };
    try {
      if (params.has("probe")) {
        report({ probes: params.getAll("probe").map((p) => ({ prefix: p, probs: next(p) })) });
      } else if (params.has("bench")) {
        // Steps of the model timed in one synchronous run (a generation's timers would let the
        // browser's virtual time stand in for real time).
        const n = Number(params.get("bench")), state = model.begin(), t0 = performance.now();
        for (let i = 0; i < n; i++) model.step(i % meta.counts.length, state);
        report({ steps: n, ms_per_step: (performance.now() - t0) / n, load_ms: t0 });
      } else if (params.has("generate")) {
        const raw = { temperature: params.get("temperature") ?? "1", length: params.get("generate"),
                      seed: params.get("seed") ?? "0" };
        const number = (text) => (text.trim() === "" ? NaN : Number(text)); // Number("") would be 0
        const settings = { prefix: params.get("prefix") || "", temperature: number(raw.temperature),
                           length: number(raw.length), seed: number(raw.seed),
                           shown: Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, JSON.stringify(v)])) };
        $("prefix").value = settings.prefix; // shown as if typed (the slider rounds to its steps)
        $("temperature").value = String(settings.temperature);
        $("temperature").dispatchEvent(new Event("input"));
        $("length").value = String(settings.length);
        $("seed").value = String(settings.seed);
        start(settings, report);
      }
    } catch (e) {
      report({ error: e.message });
    }
  }

  function main() {
    showCard();
    const t = $("temperature"), tv = $("temperature-value");
    const show = () => { tv.textContent = Number(t.value).toFixed(2); };
    t.addEventListener("input", show);
    show();
    $("generate").addEventListener("click", () => start(readControls()));
    $("prefix").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) start(readControls()); // Ctrl+Enter generates
    });
    $("stop").addEventListener("click", () => { if (running) running.stop = true; });
    $("status").textContent = "ready";
    runFragment();
  }

  main();
})();
