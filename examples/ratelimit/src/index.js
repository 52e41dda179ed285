// The Worker in front of the upstream: every request under /api/ takes a token from its
// client's bucket first and is refused with 429 and Retry-After when none is left.
export { TokenBucket } from "./bucket.js";

const MAX_KEY = 128;

// Who pays for a request: an explicit key (an API key, a user id...), else the client address.
function clientKey(request, url) {
  return (
    request.headers.get("X-Client-Key") ??
    url.searchParams.get("key") ??
    request.headers.get("CF-Connecting-IP") ??
    "anonymous"
  );
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const key = clientKey(request, url);
    if (key.length === 0 || key.length > MAX_KEY) {
      return new Response(`client keys are 1-${MAX_KEY} characters`, { status: 400 });
    }
    const bucket = env.LIMITER.getByName(key);

    if (url.pathname === "/limits") {
      // The bucket as it stands, without taking a token.
      return Response.json(await bucket.peek());
    }
    if (!url.pathname.startsWith("/api/")) {
      return new Response(
        "Requests under /api/ are rate limited per client key (X-Client-Key header or ?key=).\n" +
          "GET /limits?key=K shows a key's bucket.\n",
      );
    }

    const cost = Number(request.headers.get("X-Cost") ?? 1);
    let d;
    try {
      d = await bucket.take(cost);
    } catch (e) {
      if (e instanceof RangeError) return new Response(e.message, { status: 400 });
      throw e;
    }
    const headers = {
      "RateLimit-Limit": String(d.limit),
      "RateLimit-Remaining": String(d.remaining),
    };
    if (!d.allowed) {
      // Retry-After is in whole seconds: round up, so a client that waits that long succeeds.
      return Response.json(
        { error: "rate limited", key, retryAfterMs: d.retryAfterMs },
        {
          status: 429,
          headers: { ...headers, "Retry-After": String(Math.ceil(d.retryAfterMs / 1000)) },
        },
      );
    }
    const resp = await upstream(request, url, env, key);
    const out = new Response(resp.body, resp);
    for (const [k, v] of Object.entries(headers)) out.headers.set(k, v);
    return out;
  },
};

function upstream(request, url, env, key) {
  if (env.UPSTREAM_URL) {
    return fetch(new Request(env.UPSTREAM_URL + url.pathname + url.search, request));
  }
  return Response.json({ ok: true, key, path: url.pathname });
}
