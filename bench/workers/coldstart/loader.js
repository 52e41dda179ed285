// workerd side of the cold-start measurement. workerd has no hook that times an isolate on its
// own, but its Worker Loader binding (env.LOADER) creates a new isolate for every id it has not
// seen. `/cold` loads the hello-world script under a never-used id, so the request pays for a new
// isolate + module compile + first fetch; `/warm` goes through the same path with a fixed id
// (isolate cached after the first call). The harness reports both latencies and their difference.
import HELLO from "./hello.js";

let seq = 0;

export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    const id = path === "/warm" ? "warm" : `cold-${seq++}-${Math.random()}`;
    const worker = env.LOADER.get(id, () => ({
      compatibilityDate: "2025-09-01",
      mainModule: "index.js",
      modules: { "index.js": HELLO },
    }));
    return worker.getEntrypoint().fetch(request);
  },
};
