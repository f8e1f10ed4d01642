-- wrk load for the reminder-worker benchmark.
-- args: kind (task1 | task3 | completed | job), tag (unique per run), [job path, job body]
-- Every task event has a new task id, so the worker does the full work each time.
local counter = 0
local kind, tag, job_path, job_body
local reminders = { task1 = '["PT1H"]', task3 = '["PT1H","P1D",30]' }

function init(args)
  kind, tag, job_path, job_body = args[1], args[2] or "0", args[3], args[4]
end

function request()
  if kind == "job" then
    return wrk.format("POST", job_path, { ["Content-Type"] = "application/json" }, job_body)
  end
  counter = counter + 1
  local event_type, payload = "task.created", nil
  if kind == "completed" then
    event_type = "task.completed"
    payload = '{"title":"Pay rent","due_at":"2030-01-01T09:00:00+01:00",'
      .. '"timezone":"Europe/Berlin","recurrence":"FREQ=MONTHLY;BYMONTHDAY=1"}'
  else
    payload = '{"title":"Pay rent","due_at":"2030-01-01T09:00:00+01:00",'
      .. '"timezone":"Europe/Berlin","reminders":' .. reminders[kind] .. '}'
  end
  local body = '{"specversion":"1.0","id":"ce-' .. tag .. '-' .. counter
    .. '","source":"todo-backend","type":"com.dapr.event.sent",'
    .. '"datacontenttype":"application/json","topic":"task-events","pubsubname":"kafka-pubsub",'
    .. '"data":{"event_type":"' .. event_type .. '","event_version":"1.0","event_id":"ev-'
    .. tag .. '-' .. counter .. '","task_id":' .. counter .. ',"user_id":"user-' .. tag
    .. '","timestamp":"2026-11-26T10:00:00Z","payload":' .. payload .. '}}'
  return wrk.format("POST", "/task-events",
    { ["Content-Type"] = "application/cloudevents+json" }, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
