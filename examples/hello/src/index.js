// Routes:
//   GET  /               plain text greeting using a var
//   GET  /json           JSON built from vars and the request
//   GET  /greet/:name    a path parameter
//   POST /echo           streams the request body back
//   GET  /time           a value computed per request
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);

    if (url.pathname === "/") {
      return new Response(`${env.GREETING} from ${env.SITE.title}! Try ${env.SITE.links.join(", ")}\n`);
    }

    if (url.pathname === "/json") {
      return Response.json({
        greeting: env.GREETING,
        site: env.SITE,
        method: request.method,
        userAgent: request.headers.get("user-agent"),
        query: Object.fromEntries(url.searchParams),
      });
    }

    const greet = url.pathname.match(/^\/greet\/([^/]+)$/);
    if (greet) {
      const name = decodeURIComponent(greet[1]);
      return new Response(`${env.GREETING}, ${name}!\n`);
    }

    if (url.pathname === "/echo" && request.method === "POST") {
      return new Response(request.body, {
        headers: { "content-type": request.headers.get("content-type") ?? "application/octet-stream" },
      });
    }

    if (url.pathname === "/time") {
      return Response.json({ now: new Date().toISOString(), id: crypto.randomUUID() });
    }

    return new Response("Not found\n", { status: 404 });
  },
};
