-- wrk script: POST a unique BFL progress callback per request to one of the prepared hook paths.
-- Usage: wrk ... -s bench/ingest.lua URL -- PATHS_FILE   (lines: "<path>\t<provider task id>")
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  hooks = {}
  for line in io.lines(args[1]) do
    local path, task = line:match("([^\t]+)\t(.+)")
    table.insert(hooks, {path, task})
  end
  counter = id * 1000000000
end

function request()
  counter = counter + 1
  local hook = hooks[(counter % #hooks) + 1]
  local body = '{"task_id":"' .. hook[2] .. '","status":"processing","progress":' .. counter .. '}'
  return wrk.format("POST", hook[1], {["Content-Type"] = "application/json"}, body)
end
