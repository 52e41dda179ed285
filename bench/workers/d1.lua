-- wrk script for d1.py. D1_MODE=read: GET /user/<random 0 .. D1_USERS-1>;
-- D1_MODE=insert: POST /insert.
local mode = os.getenv("D1_MODE") or "read"
local users = tonumber(os.getenv("D1_USERS") or "10000")

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  insert = wrk.format("POST", "/insert")
end

function request()
  if mode == "insert" then return insert end
  return wrk.format("GET", "/user/" .. math.random(0, users - 1))
end
