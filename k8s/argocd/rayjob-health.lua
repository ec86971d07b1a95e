-- Argo CD health of a KubeRay RayJob (ray.io/v1), from status.jobDeploymentStatus and
-- status.jobStatus (KubeRay 1.7). The same verdicts as pipeline/k8s.py interpret(), which
-- `ray-pipeline submit` and `status` use; tests/k8s runs both on every pair of statuses.
--   Healthy      Complete and the Ray job SUCCEEDED
--   Degraded     Failed (retries used up), ValidationFailed, or Complete without success
--   Progressing  everything else: New, Initializing, Running, Retrying, Suspended, Waiting...
-- Sync waves wait for Healthy, so a RayJob in a later wave starts after this one succeeded.
local hs = {}
local status = obj.status or {}
local deployment = status.jobDeploymentStatus or ""
local job = status.jobStatus or ""

local detail = ""
if status.reason ~= nil and status.reason ~= "" then
  detail = status.reason
end
if status.message ~= nil and status.message ~= "" then
  if detail ~= "" then
    detail = detail .. ": "
  end
  detail = detail .. status.message
end

local state = deployment
if state == "" then
  state = "New"
end
if job ~= "" then
  state = state .. ", Ray job " .. job
end

if deployment == "Complete" and job == "SUCCEEDED" then
  hs.status = "Healthy"
elseif deployment == "Complete" or deployment == "Failed" or deployment == "ValidationFailed" then
  hs.status = "Degraded"
  if detail ~= "" then
    state = state .. " (" .. detail .. ")"
  end
else
  hs.status = "Progressing"
end
hs.message = state
return hs
