-- wrk script for durable.py (one wrk thread: -t1). Environment:
--   DO_MODE   touch: /obj/<prefix><i> for i = DO_START .. DO_START+DO_KEYS-1, each object's first
--                    request, once;
--                    when the last one is answered wrk is stopped (SIGINT to itself) and the
--                    time from the first request to that answer is printed (touch_elapsed_s);
--                    requests sent meanwhile after the last key go to /plain (not counted).
--             incr:  /obj/<prefix><random 0 .. DO_KEYS-1>
--             any other value: the path DO_MODE itself (e.g. /hot)
--   DO_KEYS, DO_START (default 0), DO_PREFIX
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } do_timespec;
int clock_gettime(int clk, do_timespec *tp);
int getpid(void);
int kill(int pid, int sig);
]]

local mode = os.getenv("DO_MODE") or "/hot"
local keys = tonumber(os.getenv("DO_KEYS") or "10000")
local start = tonumber(os.getenv("DO_START") or "0")
local prefix = os.getenv("DO_PREFIX") or "k"

local ts = ffi.new("do_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

sent, touched, bad, t_start, t_end = 0, 0, 0, 0, 0

function init(args)
  math.randomseed(math.floor(now() * 1e6) % 2147483647)
  if mode ~= "touch" and mode ~= "incr" then
    fixed = wrk.format("GET", mode)
  end
  plain = wrk.format("GET", "/plain")
end

-- wrk calls request() once before the run to check what it returns (on thread 0's state) and
-- never sends that one: give it /plain so no key is lost.
verified = false

function request()
  if not verified then
    verified = true
    return plain
  end
  if mode == "touch" then
    if sent == 0 then t_start = now() end
    if sent >= keys then return plain end
    sent = sent + 1
    return wrk.format("GET", "/obj/" .. prefix .. (start + sent - 1))
  elseif mode == "incr" then
    return wrk.format("GET", "/obj/" .. prefix .. math.random(0, keys - 1))
  end
  return fixed
end

function response(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
  if mode == "touch" and body ~= "plain" then
    touched = touched + 1
    if touched == keys then
      t_end = now()
      ffi.C.kill(ffi.C.getpid(), 2) -- SIGINT: wrk stops and prints its summary
    end
  end
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("do_result touched=%d bad=%d touch_elapsed_s=%.6f\n",
      t:get("touched"), t:get("bad"), t:get("t_end") - t:get("t_start")))
  end
end
