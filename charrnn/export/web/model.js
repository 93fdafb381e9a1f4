"use strict";
// charrnn's model in plain JavaScript: the cell equations of charrnn/model/network.py (torch's layouts and
// gate orders), the head (a full softmax or the adaptive softmax of charrnn/model/heads.py), softmax and a
// seedable sampler. Weights are Float32Array views, row-major
// as torch stores them; state and arithmetic are float64 (JavaScript numbers), so the page's
// probabilities differ from torch's float32 ones by rounding only.
(function () {
  const GATES = { rnn: 1, gru: 3, lstm: 4 };

  // The base64 text of little-endian float32 or float16 numbers -> Float32Array.
  function decodeWeights(text, dtype) {
    const bin = atob(text);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const view = new DataView(bytes.buffer);
    if (dtype === "float32") {
      const out = new Float32Array(bytes.length / 4);
      for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
      return out;
    }
    const out = new Float32Array(bytes.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = halfToFloat(view.getUint16(2 * i, true));
    return out;
  }

  // IEEE 754 binary16 -> number (sign, 5-bit exponent, 10-bit fraction; subnormals, inf, NaN).
  function halfToFloat(h) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) return sign * frac * 2 ** -24;
    if (exp === 31) return frac ? NaN : sign * Infinity;
    return sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }

  // out[i] = bias[i] + sum_j W[i, j] x[j] for W (rows, cols) row-major starting at offset `at`.
  // Four partial sums: four chains of additions that the CPU overlaps, where one sum would wait for
  // each addition in turn (1.4x faster in Node 20 on an AMD EPYC).
  function matvec(w, at, rows, cols, x, bias, out) {
    const end4 = cols - (cols % 4);
    for (let i = 0; i < rows; i++) {
      const row = at + i * cols;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0, j = 0;
      for (; j < end4; j += 4) {
        s0 += w[row + j] * x[j];
        s1 += w[row + j + 1] * x[j + 1];
        s2 += w[row + j + 2] * x[j + 2];
        s3 += w[row + j + 3] * x[j + 3];
      }
      for (; j < cols; j++) s0 += w[row + j] * x[j];
      out[i] = bias[i] + (s0 + s1 + (s2 + s3));
    }
  }

  const sigmoid = (v) => 1 / (1 + Math.exp(-v));

  class Model {
    // meta: {config, tensors: {name: [offset, shape]}, dtype}; text: the weights' base64.
    constructor(meta, text) {
      this.config = meta.config;
      const flat = decodeWeights(text, meta.dtype);
      this.w = {};
      for (const [name, [offset, shape]] of Object.entries(meta.tensors)) {
        const size = shape.reduce((a, b) => a * b, 1);
        this.w[name] = flat.subarray(offset, offset + size);
      }
      const c = this.config;
      this.base = c.cell.replace("scratch-", "");
      this.gates = GATES[this.base] * c.hidden;
      this.gx = new Float64Array(this.gates);
      this.gh = new Float64Array(this.gates);
      this.xe = new Float64Array(c.embed_dim);
      if (c.output === "adaptive") {
        // rank[id]: the character's position in frequency order (config.order lists ids by rank).
        this.rank = new Int32Array(c.vocab_size);
        c.order.forEach((id, r) => { this.rank[id] = r; });
        this.ends = [...c.cutoffs.slice(1), c.vocab_size];
      }
    }

    // Zero state: {h: [layers][hidden], c: (LSTM only) the same}.
    begin() {
      const c = this.config;
      const zeros = () => Array.from({ length: c.layers }, () => new Float64Array(c.hidden));
      return { h: zeros(), c: this.base === "lstm" ? zeros() : null };
    }

    // gx = W_ih x + b_ih of layer 0 for input id: with one-hot input, column `id` of W_ih.
    firstInput(id) {
      const c = this.config, w = this.w, g = this.gates;
      const bias = w["rnn.bias_ih_l0"], wih = w["rnn.weight_ih_l0"];
      if (c.input === "onehot") {
        for (let i = 0; i < g; i++) this.gx[i] = wih[i * c.vocab_size + id] + bias[i];
      } else {
        // Copied into float64, as every other x of matvec is: one element type per argument.
        const x = this.xe;
        x.set(w["embed.weight"].subarray(id * c.embed_dim, (id + 1) * c.embed_dim));
        matvec(wih, 0, g, c.embed_dim, x, bias, this.gx);
      }
    }

    // One time step: id -> logits (Float64Array of vocab_size); `state` is updated in place.
    step(id, state) {
      const c = this.config, w = this.w, H = c.hidden, gx = this.gx, gh = this.gh;
      this.firstInput(id);
      for (let k = 0; k < c.layers; k++) {
        if (k > 0) matvec(w[`rnn.weight_ih_l${k}`], 0, this.gates, H, state.h[k - 1], w[`rnn.bias_ih_l${k}`], gx);
        const h = state.h[k];
        matvec(w[`rnn.weight_hh_l${k}`], 0, this.gates, H, h, w[`rnn.bias_hh_l${k}`], gh);
        if (this.base === "rnn") {
          for (let i = 0; i < H; i++) h[i] = Math.tanh(gx[i] + gh[i]);
        } else if (this.base === "gru") {
          // Gates r, z, n; r multiplies (W_hn h + b_hn), as torch's GRU does.
          for (let i = 0; i < H; i++) {
            const r = sigmoid(gx[i] + gh[i]);
            const z = sigmoid(gx[H + i] + gh[H + i]);
            const n = Math.tanh(gx[2 * H + i] + r * gh[2 * H + i]);
            h[i] = (1 - z) * n + z * h[i];
          }
        } else {
          // Gates i, f, g, o: c' = σ(f) c + σ(i) tanh(g), h' = σ(o) tanh(c').
          const cell = state.c[k];
          for (let i = 0; i < H; i++) {
            const a = gx[i] + gh[i], f = gx[H + i] + gh[H + i];
            const g = gx[2 * H + i] + gh[2 * H + i], o = gx[3 * H + i] + gh[3 * H + i];
            cell[i] = sigmoid(f) * cell[i] + sigmoid(a) * Math.tanh(g);
            h[i] = sigmoid(o) * Math.tanh(cell[i]);
          }
        }
      }
      const top = state.h[c.layers - 1];
      if (c.output === "adaptive") return this.adaptive(top);
      const logits = new Float64Array(c.vocab_size);
      matvec(w["head.weight"], 0, c.vocab_size, H, top, w["head.bias"], logits);
      return logits;
    }

    // The adaptive head (charrnn/model/heads.py): log p of every id, which serve as logits. The shortlist and
    // one entry per cluster share a softmax; cluster i adds log p(char | cluster) behind its projection.
    adaptive(top) {
      const c = this.config, w = this.w, H = c.hidden, short = c.cutoffs[0];
      const head = new Float64Array(short + c.cutoffs.length);
      matvec(w["head.head.weight"], 0, head.length, H, top, w["head.head.bias"], head);
      logSoftmax(head);
      const byRank = new Float64Array(c.vocab_size);
      byRank.set(head.subarray(0, short));
      c.cutoffs.forEach((start, i) => {
        const size = this.ends[i] - start, width = w[`head.tail.${i}.0.weight`].length / H;
        const proj = new Float64Array(width), inner = new Float64Array(size);
        matvec(w[`head.tail.${i}.0.weight`], 0, width, H, top, new Float64Array(width), proj);
        matvec(w[`head.tail.${i}.1.weight`], 0, size, width, proj, new Float64Array(size), inner);
        logSoftmax(inner);
        for (let j = 0; j < size; j++) byRank[start + j] = head[short + i] + inner[j];
      });
      const out = new Float64Array(c.vocab_size);
      for (let id = 0; id < c.vocab_size; id++) out[id] = byRank[this.rank[id]];
      return out;
    }
  }

  // z <- log softmax(z), in place.
  function logSoftmax(z) {
    let top = -Infinity;
    for (const v of z) top = Math.max(top, v);
    let total = 0;
    for (const v of z) total += Math.exp(v - top);
    const shift = top + Math.log(total);
    for (let i = 0; i < z.length; i++) z[i] -= shift;
  }

  // Probabilities of logits / temperature; ids in `banned` get 0 (shifted by the largest logit
  // first, so that a tiny temperature gives a greedy choice, not an overflow).
  function softmax(logits, temperature = 1, banned = []) {
    const z = Float64Array.from(logits);
    for (const id of banned) z[id] = -Infinity;
    let top = -Infinity;
    for (const v of z) top = Math.max(top, v);
    let total = 0;
    for (let i = 0; i < z.length; i++) {
      z[i] = Math.exp((z[i] - top) / temperature);
      total += z[i];
    }
    for (let i = 0; i < z.length; i++) z[i] /= total;
    return z;
  }

  // Inverse-CDF draw from non-negative weights (as charrnn.inference.generate.draw): u uniform in [0, total),
  // the first id whose cumulative weight exceeds u, never an id of weight 0.
  function draw(weights, random) {
    let total = 0;
    for (const v of weights) total += v;
    const u = random() * total;
    let cum = 0, last = -1;
    for (let i = 0; i < weights.length; i++) {
      if (weights[i] > 0) last = i;
      cum += weights[i];
      if (cum > u && weights[i] > 0) return i;
    }
    return last;
  }

  // mulberry32: a small seedable generator of uniform numbers in [0, 1) (32 bits each).
  function prng(seed) {
    let a = seed >>> 0;
    return function () {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  globalThis.charrnnModel = { Model, softmax, draw, prng, halfToFloat };
})();
