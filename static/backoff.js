// Delays between reconnection attempts: initial * factor ** attempt, capped,
// with a random part taken off so that clients dropped together by one
// server restart do not all come back in the same instant.

export const DEFAULT_BACKOFF = Object.freeze({
  initial: 500,
  factor: 2,
  max: 30_000,
  jitter: 0.5,
});

export class Backoff {
  constructor(options = {}, random = Math.random) {
    const { initial, factor, max, jitter } = { ...DEFAULT_BACKOFF, ...options };
    if (!(initial > 0) || !(max >= initial) || !(factor >= 1)) {
      throw new RangeError(`invalid backoff ${JSON.stringify(options)}`);
    }
    if (!(jitter >= 0 && jitter < 1)) {
      throw new RangeError(`backoff jitter must be in [0, 1), not ${jitter}`);
    }
    Object.assign(this, { initial, factor, max, jitter });
    this._random = random;
  }

  /** Milliseconds to wait before attempt number `attempt` (0 for the first). */
  delay(attempt) {
    const base = Math.min(
      this.max,
      this.initial * this.factor ** Math.min(attempt, 64),
    );
    return Math.round(base * (1 - this.jitter * this._random()));
  }
}
