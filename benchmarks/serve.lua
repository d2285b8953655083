-- wrk script for popek serve: a mix of requests (POST bodies included), every answer checked.
--
--   wrk -t2 -c32 -d300s --timeout 10s -s benchmarks/serve.lua http://127.0.0.1:8023 -- MIX [QUOTA [MARKER]]
--
-- MIX: kinds joined with "," from echo, crc32, primes, kvget, kvput, long (primes 1,000,000), plain (POST
-- /echo without the body check, for servers that are not popek); default "echo". kvget reads the key "load",
-- which the caller stores first with the value KV_VALUE below.
-- QUOTA: responses each thread waits for before it stops (0 or none: until -d ends). wrk itself waits for -d
-- to end whatever its threads do, so with MARKER (a path prefix) each thread writes MARKER.<n> once it has
-- its quota, and the caller then ends wrk with SIGINT (wrk reports as usual).
--
-- Every response is checked: its status must be 2xx and its body one a request of the mix can have (the
-- echo body, the CRC-32 of the crc32 body, the count of primes, the kv value, or nothing for a 204); wrk
-- cannot tell which request of a thread a response answers, so a body is checked against the mix.
-- done() prints one line "POPEK-RESULT {json}" that tests/test_load.py and benchmarks/serve.py read.

local ECHO_BODY = string.rep("popek-echo-", 6)          -- 66 bytes
local CRC_BODY = "123456789"
local CRC_HEX = "cbf43926"                              -- zlib.crc32(b"123456789")
local KV_VALUE = "load-value"

local function kinds()
  -- built in init(): wrk.format needs wrk.host, which is set once the script has loaded
  return {
    echo   = {wrk.format("POST", "/echo", {["Content-Type"] = "application/octet-stream"}, ECHO_BODY), ECHO_BODY},
    crc32  = {wrk.format("POST", "/crc32", nil, CRC_BODY), CRC_HEX},
    primes = {wrk.format("GET", "/primes/1000"), "168"},
    long   = {wrk.format("GET", "/primes/1000000"), "78498"},
    kvget  = {wrk.format("GET", "/kv/load"), KV_VALUE},
    kvput  = {wrk.format("PUT", "/kv/load", nil, KV_VALUE), ""},
    plain  = {wrk.format("POST", "/echo", nil, ECHO_BODY), nil},
  }
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  requests_ = {}
  expected = {}
  check = true
  local known = kinds()
  for name in string.gmatch(args[1] or "echo", "[^,]+") do
    local k = known[name]
    if k == nil then
      error("unknown request kind " .. name)
    end
    table.insert(requests_, k[1])
    if k[2] == nil then
      check = false
    else
      expected[k[2]] = true
    end
  end
  quota = tonumber(args[2] or "0")
  marker = args[3]
  sent, answered, non2xx, badbody, i = 0, 0, 0, 0, 0
  statuses = {}
end

function request()
  i = i % #requests_ + 1
  sent = sent + 1
  return requests_[i]
end

function response(status, headers, body)
  answered = answered + 1
  statuses[status] = (statuses[status] or 0) + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  elseif check and not expected[body or ""] then
    badbody = badbody + 1
  end
  if quota > 0 and answered == quota then
    -- wrk runs until -d ends whatever its threads do; the caller waits for these files, then sends SIGINT
    if marker then
      local f = io.open(marker .. "." .. id, "w")
      f:write(answered)
      f:close()
    end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local total = {sent = 0, answered = 0, non2xx = 0, badbody = 0}
  local codes = {}
  for _, t in ipairs(threads) do
    for k, _ in pairs(total) do
      total[k] = total[k] + t:get(k)
    end
    for code, n in pairs(t:get("statuses")) do
      codes[code] = (codes[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(codes) do
    table.insert(parts, string.format('"%d": %d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'POPEK-RESULT {"requests": %d, "sent": %d, "answered": %d, "non2xx": %d, "bad_body": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, "statuses": {%s}, ' ..
    '"duration_s": %.3f, "rps": %.1f, "latency_ms": {"p50": %.3f, "p90": %.3f, "p99": %.3f, "max": %.3f}}\n',
    summary.requests, total.sent, total.answered, total.non2xx, total.badbody,
    e.connect, e.read, e.write, e.timeout, table.concat(parts, ", "),
    summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
