-- wrk script for miniflare_side.py. BENCH_MODE=read: GET <BENCH_READ><random 0 .. BENCH_KEYS-1>;
-- BENCH_MODE=insert: POST /insert.
local mode = os.getenv("BENCH_MODE") or "read"
local keys = tonumber(os.getenv("BENCH_KEYS") or "10000")
local prefix = os.getenv("BENCH_READ") or "/user/"

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  insert = wrk.format("POST", "/insert")
end

function request()
  if mode == "insert" then return insert end
  return wrk.format("GET", prefix .. math.random(0, keys - 1))
end
