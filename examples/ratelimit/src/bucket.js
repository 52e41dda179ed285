// One client key's token bucket, kept in storage so that decisions survive restarts and a
// client never gets more than its budget. An alarm deletes the bucket once it has refilled,
// since a full bucket and no bucket mean the same: idle keys cost no storage.
import { DurableObject } from "cloudflare:workers";

export class TokenBucket extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.capacity = Number(env.RL_CAPACITY) || 10;
    this.rate = Number(env.RL_RATE_PER_SEC) || 5;
    ctx.blockConcurrencyWhile(async () => {
      // { tokens, at }: tokens left at time `at` (ms); none stored = a full bucket.
      this.state = (await ctx.storage.get("bucket")) ?? null;
      this.alarmAt = await ctx.storage.getAlarm();
    });
  }

  tokensAt(now) {
    if (!this.state) return this.capacity;
    const refilled = ((now - this.state.at) / 1000) * this.rate;
    return Math.min(this.capacity, this.state.tokens + refilled);
  }

  /** When the bucket will be full again, in ms since the epoch. */
  fullAt(now) {
    return now + Math.ceil(((this.capacity - this.tokensAt(now)) / this.rate) * 1000);
  }

  take(cost = 1) {
    if (!Number.isInteger(cost) || cost < 1 || cost > this.capacity) {
      throw new RangeError(`cost must be an integer from 1 to ${this.capacity}`);
    }
    const now = Date.now();
    const tokens = this.tokensAt(now);
    const decision = { limit: this.capacity, allowed: tokens >= cost, retryAfterMs: 0 };
    if (!decision.allowed) {
      // Nothing to write: the stored state already yields these tokens at this time.
      decision.remaining = Math.floor(tokens);
      decision.retryAfterMs = Math.ceil(((cost - tokens) / this.rate) * 1000);
      return decision;
    }
    this.state = { tokens: tokens - cost, at: now };
    // Not awaited: the output gate holds the answer until the write is durable, so an allowed
    // request is never forgotten by a crash.
    this.ctx.storage.put("bucket", this.state);
    if (this.alarmAt === null) {
      this.alarmAt = this.fullAt(now);
      this.ctx.storage.setAlarm(this.alarmAt);
    }
    decision.remaining = Math.floor(this.state.tokens);
    return decision;
  }

  async peek() {
    const now = Date.now();
    return {
      capacity: this.capacity,
      ratePerSec: this.rate,
      tokens: this.tokensAt(now),
      stored: (await this.ctx.storage.get("bucket")) ?? null,
      alarm: await this.ctx.storage.getAlarm(),
    };
  }

  async alarm() {
    this.alarmAt = null;
    if (!this.state) return;
    const now = Date.now();
    if (this.tokensAt(now) >= this.capacity) {
      this.state = null;
      await this.ctx.storage.delete("bucket");
    } else {
      // Used since the alarm was set: check again when it will be full.
      this.alarmAt = this.fullAt(now);
      await this.ctx.storage.setAlarm(this.alarmAt);
    }
  }
}
