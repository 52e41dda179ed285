// Per-user rate limit for the chat: one object per user name, a token bucket of CHAT_BURST
// messages refilled at CHAT_RATE_PER_SEC. Rooms ask it before broadcasting.
import { DurableObject } from "cloudflare:workers";

export class RateLimiter extends DurableObject {
  // The bucket lives in memory only: it refills completely within seconds, sooner than an
  // idle object is evicted, so losing it on eviction loses nothing a user could notice.

  /** Takes one token: 0 when the message may go, else milliseconds until one is available. */
  take() {
    const burst = Number(this.env.CHAT_BURST) || 5;
    const rate = Number(this.env.CHAT_RATE_PER_SEC) || 1;
    const now = Date.now();
    const elapsed = this.at === undefined ? 0 : (now - this.at) / 1000;
    this.tokens = Math.min(burst, (this.tokens ?? burst) + elapsed * rate);
    this.at = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.tokens) / rate) * 1000);
  }
}
