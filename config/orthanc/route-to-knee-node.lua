-- Orthanc -> knee-node auto-routing.
--
-- Forwards each stored CR/DX knee radiograph to the "knee-node" modality as soon as it is stored
-- (OnStoredInstance: the node grades single images, so waiting for a stable series would only add delay).
-- Never forwards knee-node's results (Manufacturer "knee-node", and anything the node's AE title sends), so
-- nothing loops.
--
-- Orthanc's jobs do not retry by themselves: a failed send is resubmitted with exponential backoff, checked from
-- OnHeartBeat (Orthanc >= 1.11.1 with "LuaHeartBeatPeriod") and, on older Orthanc, at every Orthanc event (a
-- stored instance, a finished job).  Failed sends of an earlier Orthanc run are picked up at the first event.

local NODE = 'knee-node'          -- key in DicomModalities
local NODE_AET = 'KNEE_NODE'
local MODALITIES = {CR = true, DX = true}
local KEYWORDS = {'KNEE', 'KNIE', 'GENOU', 'GINOCCHIO', 'RODILLA', 'JOELHO'}
local MAX_ATTEMPTS = 12           -- with the backoff below, about an hour
local waiting = {}                -- failed job id -> {attempts = n, due = time of the next try}
local running = {}                -- resubmitted job id -> attempts so far
local recovered = false

local function IsKneeRadiograph(tags)
  if not MODALITIES[tags['Modality'] or ''] or tags['Manufacturer'] == 'knee-node' then
    return false
  end
  local described = string.upper(table.concat({tags['BodyPartExamined'] or '', tags['StudyDescription'] or '',
                                                tags['SeriesDescription'] or '', tags['ProtocolName'] or ''}, ' '))
  for _, keyword in ipairs(KEYWORDS) do
    if string.find(described, keyword, 1, true) then
      return true
    end
  end
  return false
end

local function IsSendToNode(job)
  return job['Type'] == 'DicomModalityStore' and job['Content']['RemoteAet'] == NODE_AET
end

local function RetryDue()
  if not recovered then  -- failed sends left by an earlier run of Orthanc
    recovered = true
    for _, job in ipairs(ParseJson(RestApiGet('/jobs?expand'))) do
      if job['State'] == 'Failure' and IsSendToNode(job) then
        waiting[job['ID']] = {attempts = 1, due = os.time()}
      end
    end
  end
  local now = os.time()
  for jobId, state in pairs(waiting) do
    if state.due <= now then
      waiting[jobId] = nil
      running[jobId] = state.attempts
      RestApiPost('/jobs/' .. jobId .. '/resubmit', '')
    end
  end
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  RetryDue()
  if origin['RequestOrigin'] == 'DicomProtocol' and origin['RemoteAet'] == NODE_AET then
    return
  end
  if IsKneeRadiograph(tags) then
    RestApiPost('/modalities/' .. NODE .. '/store', DumpJson({Resources = {instanceId}, Synchronous = false}, true))
  end
end

function OnJobFailure(jobId)
  local job = ParseJson(RestApiGet('/jobs/' .. jobId))
  if IsSendToNode(job) then
    local attempts = (running[jobId] or 0) + 1
    running[jobId] = nil
    if attempts < MAX_ATTEMPTS then
      waiting[jobId] = {attempts = attempts, due = os.time() + math.min(600, 5 * 2 ^ (attempts - 1))}
    else
      print('knee-node routing: gave up on job ' .. jobId .. ': ' .. (job['ErrorDetails'] or ''))
    end
  end
  RetryDue()
end

function OnJobSuccess(jobId)
  running[jobId] = nil
  RetryDue()
end

function OnHeartBeat()
  RetryDue()
end
