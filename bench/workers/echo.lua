-- wrk script for the JSON-echo workload: POST the body in $ECHO_BODY (a file) on every request.
local f = assert(io.open(os.getenv("ECHO_BODY"), "rb"))
wrk.method = "POST"
wrk.body = (f:read("*a"):gsub("%s+$", ""))
f:close()
wrk.headers["Content-Type"] = "application/json"
