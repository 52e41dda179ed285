// Stand-in for `ext:deno_net/02_tls.js`, which `deno_fetch`'s Request code imports for
// `Deno.createHttpClient` TLS options. Workers have no such API, so cinder does not link
// deno_net; this keeps the import resolvable.
(function () {
  function loadTlsKeyPair() {
    throw new TypeError("Deno.createHttpClient TLS options are not available in cinder");
  }
  return { loadTlsKeyPair };
})();
