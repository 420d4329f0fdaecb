-- Argo CD health of an edgevisor Fleet, from the status the controller writes: Ready,
-- Reconciling, Progressing, Stalled and RolloutAborted conditions, each with a reason, and
-- status.observedGeneration. Argo CD runs this with the Fleet as `obj` and, unless
-- useOpenLibs is set, only Lua's base, table and os libraries: no string functions here.
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

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function count(field)
  return obj.status[field] or 0
end

local function non_empty(s)
  return s ~= nil and s ~= ""
end

local spec = obj.spec or {}
local name = obj.metadata.name
local namespace = obj.metadata.namespace or "default"
local patch = "kubectl -n " .. namespace .. " patch fleet " .. name .. " --type merge -p "

-- Nothing is known until the controller has seen this generation of the spec.
if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe the fleet"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. obj.metadata.generation ..
    " (status is of generation " .. obj.status.observedGeneration .. ")"
  return hs
end

local revision = obj.status.updateRevision or "the update revision"
local updated = count("updated") .. "/" .. count("devices") .. " devices updated to " .. revision
local step = obj.status.currentStep

local stalled = condition("Stalled")
local aborted = condition("RolloutAborted")
if is_true(aborted) then
  hs.status = "Degraded"
  -- The controller's message names the revision, the failed devices and where they go back.
  if non_empty(aborted.message) then
    hs.message = aborted.message
  else
    hs.message = "Rollout of " .. revision .. " aborted"
  end
  hs.message = hs.message .. "; to try again: kubectl edgevisor -n " .. namespace .. " rollout retry " .. name
  return hs
end
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = "Stalled: " .. (stalled.reason or "no reason given")
  if stalled.reason == "RenderFailed" then
    hs.message = "Cannot render the template"
  end
  if non_empty(stalled.message) then
    hs.message = hs.message .. ": " .. stalled.message
  end
  return hs
end

local ready = condition("Ready")
-- A complete rollout stays complete while the fleet is held.
if spec.paused == true and not is_true(ready) then
  hs.status = "Suspended"
  hs.message = "Paused by spec.paused, " .. updated .. "; to go on: " .. patch ..
    "'{\"spec\":{\"paused\":false}}'"
  return hs
end
if ready ~= nil and ready.reason == "WaitingForResume" then
  hs.status = "Suspended"
  hs.message = "Waiting for resume at step " .. (step or "?") .. ", " .. updated .. "; to go on: " ..
    "kubectl edgevisor -n " .. namespace .. " rollout promote " .. name .. ", or " ..
    patch .. "'{\"spec\":{\"resume\":{\"revision\":\"" .. revision .. "\",\"step\":" .. (step or 0) .. "}}}'"
  return hs
end
if ready ~= nil and ready.reason == "StepPaused" then
  hs.status = "Suspended"
  hs.message = "Paused after step " .. (step or "?")
  local index = tonumber(step)
  local steps = (spec.strategy or {}).steps
  if index ~= nil and steps ~= nil and steps[index + 1] ~= nil and steps[index + 1].pause ~= nil
      and steps[index + 1].pause.durationSeconds ~= nil then
    hs.message = hs.message .. " for " .. steps[index + 1].pause.durationSeconds .. "s"
  end
  if non_empty(obj.status.pauseStartedAt) then
    hs.message = hs.message .. " from " .. obj.status.pauseStartedAt
  end
  hs.message = hs.message .. ", " .. updated
  return hs
end

if is_true(ready) then
  hs.status = "Healthy"
  hs.message = "Rollout complete: " .. count("updated") .. "/" .. count("devices") .. " devices run " .. revision
  if count("unsupported") > 0 then
    hs.message = hs.message .. ", " .. count("unsupported") .. " of an architecture the images lack"
  end
  return hs
end

hs.status = "Progressing"
if ready ~= nil and ready.reason == "RollingOut" then
  hs.message = updated
  if step ~= nil then
    hs.message = hs.message .. ", step " .. step
  end
  for _, field in ipairs({ "updating", "failed", "offline" }) do
    if count(field) > 0 then
      hs.message = hs.message .. ", " .. count(field) .. " " .. field
    end
  end
elseif ready ~= nil and non_empty(ready.message) then
  hs.message = (ready.reason or "Not ready") .. ": " .. ready.message
else
  hs.message = "Waiting for the controller to report the rollout"
end
return hs
