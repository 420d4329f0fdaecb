-- Argo CD health of an edgevisor Device, from the status its gateway writes: the latest update
-- (status.update: QUEUED, DOWNLOADING, INPROGRESS, TESTING, DONE, WONTGO or ERROR) and the Ready,
-- UpToDate and Online conditions; spec.revision is the device's target and spec.paused holds it.
-- Argo CD runs this with the Device as `obj` and, unless useOpenLibs is set, only Lua's base,
-- table and os libraries: no string functions here.
local hs = {}

local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function non_empty(s)
  return s ~= nil and s ~= ""
end

local in_flight = { QUEUED = true, DOWNLOADING = true, INPROGRESS = true, TESTING = true }
local failed = { ERROR = true, WONTGO = true }

local spec = obj.spec or {}
local name = obj.metadata.name
local namespace = obj.metadata.namespace or "default"

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the device to report"
  return hs
end

local current = obj.status.currentRevision or "no revision"
local update = obj.status.update
local ready = condition("Ready")
local up_to_date = condition("UpToDate")
local online = condition("Online")

-- An unreachable device is a problem whatever else holds: it can neither update nor report.
if online ~= nil and online.status == "False" then
  hs.status = "Degraded"
  hs.message = "Offline"
  if non_empty(online.message) then
    hs.message = hs.message .. ": " .. online.message
  end
  if non_empty(obj.status.lastSeen) then
    hs.message = hs.message .. "; last seen " .. obj.status.lastSeen
  end
  hs.message = hs.message .. "; runs " .. current
  return hs
end

if spec.paused == true then
  hs.status = "Suspended"
  hs.message = "Held by spec.paused: runs " .. current .. " and takes no new revision; to release: kubectl -n " ..
    namespace .. " patch device " .. name .. " --type merge -p '{\"spec\":{\"paused\":false}}'"
  return hs
end

if update ~= nil and update.revision == spec.revision and failed[update.status] then
  hs.status = "Degraded"
  hs.message = "Update to " .. update.revision .. " ended " .. update.status
  if non_empty(update.reason) then
    hs.message = hs.message .. " (" .. update.reason .. ")"
  end
  if non_empty(update.message) then
    hs.message = hs.message .. ": " .. update.message
  end
  hs.message = hs.message .. "; runs " .. current
  return hs
end

if update ~= nil and in_flight[update.status] then
  hs.status = "Progressing"
  hs.message = "Updating to " .. update.revision .. ": " .. update.status .. " " .. (update.progress or 0) .. "%"
  if non_empty(update.message) then
    hs.message = hs.message .. ", " .. update.message
  end
  return hs
end

if up_to_date ~= nil and up_to_date.status == "True" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = "Runs " .. current .. ", every container at its goal"
  return hs
end

hs.status = "Progressing"
if spec.revision == nil then
  hs.message = "No target revision yet"
elseif up_to_date == nil or up_to_date.status ~= "True" then
  hs.message = "Waiting for the device to take " .. spec.revision .. " (runs " .. current .. ")"
else
  hs.message = "Runs " .. current .. ", not every container at its goal"
  if ready ~= nil and non_empty(ready.message) then
    hs.message = hs.message .. ": " .. ready.message
  end
end
return hs
