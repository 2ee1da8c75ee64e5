//! The Lua scripts that make each multi-key step atomic in Redis (map channels' keyed
//! publish, state read and key expiry among them: see `map_lua`). They are run by EVALSHA and
//! loaded on `NOSCRIPT` ([`redis::Script`]), so a restarted Redis needs no setup. Time comes
//! from Redis' own clock (`TIME`), so nodes with skewed clocks agree on expiry.

use redis::Script;

/// Publish with history (or with an idempotency key).
///
/// KEYS: meta, stream, idempotency key. ARGV: pub/sub channel, codec bytes, history size,
/// history ttl ms, meta ttl ms (0: the position never expires), a fresh epoch (used only when
/// the stream does not exist), idempotency ttl ms (0: no key), the publish command (`PUBLISH`,
/// or `SPUBLISH` on a cluster, whose pub/sub channel carries the keys' hash tag), the
/// server's lineage (its replication id; empty: not checked).
/// Returns `{offset, epoch}` as strings (`{"0", ""}` when no history is kept).
///
/// A missing meta hash means a new stream: a meta that expired, or a Redis that lost its data
/// (restart, FLUSHALL). So does a stream last written under another lineage: a replica
/// promoted by a failover, which may lack the last publications its master acknowledged. The
/// new epoch is set then, and any leftover entries dropped, so offsets are never reused
/// under an old epoch for other publications.
pub(crate) const PUBLISH: &str = r#"
local idem_ttl = tonumber(ARGV[7])
if idem_ttl > 0 then
  local cached = redis.call('GET', KEYS[3])
  if cached then
    local space = string.find(cached, ' ', 1, true)
    return {string.sub(cached, 1, space - 1), string.sub(cached, space + 1)}
  end
end
local size = tonumber(ARGV[3])
local lineage = ARGV[9]
local offset = 0
local epoch = ''
if size > 0 then
  epoch = redis.call('HGET', KEYS[1], 'e')
  if epoch and lineage ~= '' then
    local written = redis.call('HGET', KEYS[1], 'r')
    if written and written ~= lineage then
      epoch = false
    end
  end
  if not epoch then
    epoch = ARGV[6]
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  end
  if lineage ~= '' then
    redis.call('HSET', KEYS[1], 'r', lineage)
  end
  offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    local now = redis.call('TIME')
    local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    redis.call('XADD', KEYS[2], 'MAXLEN', size, offset .. '-0', 'd', ARGV[2], 'x', now_ms + ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  local meta_ttl = tonumber(ARGV[5])
  if meta_ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], math.max(meta_ttl, ttl))
  else
    -- A stream a subscribe started carries its short TTL; published, it never expires.
    redis.call('PERSIST', KEYS[1])
  end
end
redis.call(ARGV[8], ARGV[1], offset .. ' ' .. epoch .. '\n' .. ARGV[2])
if idem_ttl > 0 then
  redis.call('SET', KEYS[3], offset .. ' ' .. epoch, 'PX', idem_ttl)
end
return {tostring(offset), epoch}
"#;

/// Read history. KEYS: meta, stream. ARGV: since offset (`""`: none), limit (`-1`: none),
/// reverse (`1`/`0`). Returns `{offset, epoch, {offset, data, offset, data, ...}}`; a missing
/// stream gives `{"0", "", {}}` and nothing is written.
pub(crate) const HISTORY: &str = r#"
local meta = redis.call('HMGET', KEYS[1], 'o', 'e')
if not meta[1] then
  return {'0', '', {}}
end
local top = tonumber(meta[1])
local limit = tonumber(ARGV[2])
local reverse = ARGV[3] == '1'
local out = {}
if limit == 0 then
  return {meta[1], meta[2], out}
end
local entries
if ARGV[1] == '' then
  if reverse then
    entries = redis.call('XREVRANGE', KEYS[2], '+', '-')
  else
    entries = redis.call('XRANGE', KEYS[2], '-', '+')
  end
else
  local since = tonumber(ARGV[1])
  if reverse then
    if since <= 1 then
      return {meta[1], meta[2], out}
    end
    entries = redis.call('XREVRANGE', KEYS[2], (since - 1) .. '-0', '-')
  else
    if since >= top then
      return {meta[1], meta[2], out}
    end
    entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+')
  end
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local taken = 0
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local data, expires
  for i = 1, #fields, 2 do
    if fields[i] == 'd' then data = fields[i + 1] elseif fields[i] == 'x' then expires = tonumber(fields[i + 1]) end
  end
  if data and expires and expires > now_ms then
    local id = entry[1]
    out[#out + 1] = string.sub(id, 1, string.find(id, '-', 1, true) - 1)
    out[#out + 1] = data
    taken = taken + 1
    if limit > 0 and taken >= limit then break end
  end
end
return {meta[1], meta[2], out}
"#;

/// Lua shared by the scripts that know about map channels. Every such script names the
/// channel's keys in one order: KEYS[1] meta, KEYS[2] stream, KEYS[3] map values (hash: key →
/// `<offset> <codec bytes>` of its latest publication), KEYS[4] map keys (sorted set, score 0,
/// so `ZRANGEBYLEX` walks them in bytewise order), KEYS[5] map expiry (sorted set: key → when
/// it expires, ms on Redis' clock; only keys set with a TTL). The meta hash also holds `ms`
/// and `mt`, the history size and TTL of the map's last keyed publish, which the removals
/// an expiry writes are kept with.
///
/// The map keys live exactly as long as the stream position: whenever the meta's TTL is set,
/// theirs is set to the same (`keep_map_with_meta`), so a state page is never read from a
/// map that outlived, or was outlived by, the position it is read at.
macro_rules! map_lua {
    () => {
        r#"
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

local function varint(n)
  local out = ''
  while n >= 128 do
    out = out .. string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  return out .. string.char(n)
end

-- The codec bytes of a removal of `key` (switchboard::broker::codec's PublicationWire:
-- field 6, the key, length-delimited; field 7, removed, true).
local function removal_bytes(key)
  return string.char(0x32) .. varint(#key) .. key .. string.char(0x38, 1)
end

-- The stream's epoch, starting a stream when there is none (or it was last written under
-- another lineage: a promoted replica), with `ttl` ms to live when started (0: none); an
-- existing one's TTL is pushed to at least `ttl`, never shortened. A stream whose meta is
-- gone takes its map with it; after a failover the map the replica holds is kept (it is
-- the state of the stream the replica had), under the new epoch.
local function start_stream(fresh, ttl, lineage)
  local epoch = redis.call('HGET', KEYS[1], 'e')
  local lost = not epoch
  if epoch and lineage ~= '' then
    local written = redis.call('HGET', KEYS[1], 'r')
    if written and written ~= lineage then
      epoch = false
    end
  end
  if not epoch then
    epoch = fresh
    redis.call('DEL', KEYS[2])
    if lost then
      redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
    end
    redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
    if lineage ~= '' then
      redis.call('HSET', KEYS[1], 'r', lineage)
    end
    if ttl > 0 then
      redis.call('PEXPIRE', KEYS[1], ttl)
    end
  else
    local left = redis.call('PTTL', KEYS[1])
    if ttl > 0 and left >= 0 and left < ttl then
      redis.call('PEXPIRE', KEYS[1], ttl)
    end
  end
  return epoch
end

-- Gives the map's keys the meta's expiry (or none, as it has none).
local function keep_map_with_meta()
  if redis.call('EXISTS', KEYS[4]) == 0 then
    return
  end
  local left = redis.call('PTTL', KEYS[1])
  for i = 3, 5 do
    if left > 0 then
      redis.call('PEXPIRE', KEYS[i], left)
    elseif left == -1 then
      redis.call('PERSIST', KEYS[i])
    end
  end
end

-- Keeps `body` under the next offset and publishes it (or `live`, when given: the same
-- publication with more for the nodes than the stream keeps); returns the offset.
local function append(body, epoch, size, ttl, now, target, command, live)
  local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
  if ttl > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', size, offset .. '-0', 'd', body, 'x', now + ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  redis.call(command, target, offset .. ' ' .. epoch .. '\n' .. (live or body))
  return offset
end

-- The live form of a keyed set `body` of `key`: with the codec bytes of the value it
-- replaces as field 8 (`base`, length-delimited), which its delta subscribers' per-key
-- deltas are made against; `body` itself when the key is new.
local function with_base(body, key)
  local previous = redis.call('HGET', KEYS[3], key)
  if not previous then
    return body
  end
  local space = string.find(previous, ' ', 1, true)
  local bytes = string.sub(previous, space + 1)
  return body .. string.char(0x42) .. varint(#bytes) .. bytes
end

-- Takes out every map key whose time is up, each as a removal kept in the stream and
-- published. Atomic with the rest of the calling script, so nodes sweeping one channel at
-- once make each removal once.
local function expire_keys(epoch, now, target, command)
  local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)
  if #due == 0 then
    return
  end
  local size = tonumber(redis.call('HGET', KEYS[1], 'ms') or '0')
  local ttl = tonumber(redis.call('HGET', KEYS[1], 'mt') or '0')
  for _, key in ipairs(due) do
    redis.call('ZREM', KEYS[5], key)
    redis.call('ZREM', KEYS[4], key)
    redis.call('HDEL', KEYS[3], key)
    append(removal_bytes(key), epoch, size, ttl, now, target, command)
  end
end
"#
    };
}

/// Start a stream if there is none (what a subscribe needs: an epoch the client can recover
/// against later). KEYS: as `map_lua`. ARGV: a fresh epoch, ttl ms (the short TTL of a stream
/// nobody published to; 0: never expires), the server's lineage (empty: not checked). Returns
/// `{offset, epoch}` as strings. A stream that exists in this lineage is read, and its TTL
/// extended to at least `ttl` (never shortened: a published stream keeps its meta TTL), a
/// map's keys with it; one last written under another lineage starts over under a new
/// epoch, as in `PUBLISH`.
pub(crate) const STREAM_POSITION: &str = concat!(
    map_lua!(),
    r#"
local epoch = start_stream(ARGV[1], tonumber(ARGV[2]), ARGV[3])
keep_map_with_meta()
local offset = redis.call('HGET', KEYS[1], 'o') or '0'
return {tostring(offset), epoch}
"#
);

/// Read a stream's position and extend its TTL to at least `ttl` (never shorten it; a key
/// with no TTL is left so), starting nothing: what a node's position check does for each
/// channel it has subscribers to, so that a stream a subscribe started lives while they do.
/// On a map channel it also takes out the keys whose time is up (each a removal kept and
/// published), so a map's expiry reaches subscribers at their nodes' position checks.
/// KEYS: as `map_lua`. ARGV: ttl ms (0: extend nothing), the pub/sub channel of the
/// channel's publications, the publish command. Returns `{offset, epoch}` as strings
/// (`{"0", ""}` when there is no stream). PTTL and a compare rather than `PEXPIRE ... GT`,
/// which Redis 7 would need.
pub(crate) const KEEP_STREAM: &str = concat!(
    map_lua!(),
    r#"
local meta = redis.call('HMGET', KEYS[1], 'o', 'e')
if not meta[1] then
  return {'0', ''}
end
local ttl = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if ttl > 0 and left >= 0 and left < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  expire_keys(meta[2], now_ms(), ARGV[2], ARGV[3])
end
keep_map_with_meta()
return {tostring(redis.call('HGET', KEYS[1], 'o')), meta[2]}
"#
);

/// A keyed publication to a map channel: the stream, the map's state and the offset change
/// together, and the publication is published, in one step. KEYS: as `map_lua`, then the
/// idempotency key. ARGV: pub/sub channel, codec bytes (with the key), history size, history
/// ttl ms, meta ttl ms (0: the position never expires), a fresh epoch, idempotency ttl ms (0:
/// no key), the publish command, the server's lineage (empty: not checked), the map key,
/// `1` for a removal (else `0`), the key's ttl ms (0: until removed). Expired keys are taken
/// out first. A removal of a key that is not there keeps nothing and publishes nothing.
/// Returns `{offset, epoch}` as strings (the position as it is, for a removal that changed
/// nothing).
pub(crate) const MAP_PUBLISH: &str = concat!(
    map_lua!(),
    r#"
local idem_ttl = tonumber(ARGV[7])
if idem_ttl > 0 then
  local cached = redis.call('GET', KEYS[6])
  if cached then
    local space = string.find(cached, ' ', 1, true)
    return {string.sub(cached, 1, space - 1), string.sub(cached, space + 1)}
  end
end
local size = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local lineage = ARGV[9]
local epoch = start_stream(ARGV[6], 0, lineage)
if lineage ~= '' then
  redis.call('HSET', KEYS[1], 'r', lineage)
end
redis.call('HSET', KEYS[1], 'ms', size, 'mt', ttl)
local now = now_ms()
expire_keys(epoch, now, ARGV[1], ARGV[8])
local key = ARGV[10]
local removal = ARGV[11] == '1'
local offset
if removal and not redis.call('ZSCORE', KEYS[4], key) then
  offset = tonumber(redis.call('HGET', KEYS[1], 'o'))
else
  local live = nil
  if not removal then
    live = with_base(ARGV[2], key)
  end
  offset = append(ARGV[2], epoch, size, ttl, now, ARGV[1], ARGV[8], live)
  if removal then
    redis.call('HDEL', KEYS[3], key)
    redis.call('ZREM', KEYS[4], key)
    redis.call('ZREM', KEYS[5], key)
  else
    redis.call('HSET', KEYS[3], key, offset .. ' ' .. ARGV[2])
    redis.call('ZADD', KEYS[4], 0, key)
    local key_ttl = tonumber(ARGV[12])
    if key_ttl > 0 then
      redis.call('ZADD', KEYS[5], now + key_ttl, key)
    else
      redis.call('ZREM', KEYS[5], key)
    end
  end
end
local meta_ttl = tonumber(ARGV[5])
if meta_ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], math.max(meta_ttl, ttl))
else
  redis.call('PERSIST', KEYS[1])
end
keep_map_with_meta()
if idem_ttl > 0 then
  redis.call('SET', KEYS[6], offset .. ' ' .. epoch, 'PX', idem_ttl)
end
return {tostring(offset), epoch}
"#
);

/// A page of a map channel's state, read with the stream position in one step (so the page
/// holds every change up to that position and the stream from it every later one). Starts
/// the stream when there is none, as `STREAM_POSITION` does, and takes out expired keys
/// first. KEYS: as `map_lua`. ARGV: a fresh epoch, ttl ms, the server's lineage, the cursor
/// (the last key of the previous page; empty: from the first), the page size (at least 1),
/// the pub/sub channel, the publish command. Returns `{offset, epoch, cursor, {key, value,
/// key, value, ...}}`, each value `<offset> <codec bytes>`, the cursor empty on the last
/// page.
pub(crate) const MAP_STATE: &str = concat!(
    map_lua!(),
    r#"
local epoch = start_stream(ARGV[1], tonumber(ARGV[2]), ARGV[3])
expire_keys(epoch, now_ms(), ARGV[6], ARGV[7])
keep_map_with_meta()
local limit = tonumber(ARGV[5])
local from = '-'
if ARGV[4] ~= '' then
  from = '(' .. ARGV[4]
end
local keys = redis.call('ZRANGEBYLEX', KEYS[4], from, '+', 'LIMIT', 0, limit + 1)
local cursor = ''
if #keys > limit then
  keys[#keys] = nil
  cursor = keys[#keys]
end
local out = {}
if #keys > 0 then
  local values = redis.call('HMGET', KEYS[3], unpack(keys))
  for i, key in ipairs(keys) do
    if values[i] then
      out[#out + 1] = key
      out[#out + 1] = values[i]
    end
  end
end
local offset = redis.call('HGET', KEYS[1], 'o') or '0'
return {tostring(offset), epoch, cursor, out}
"#
);

/// Add (or refresh) a presence entry. KEYS: presence hash, expiry set. ARGV: client id, codec
/// bytes, ttl ms. The keys live as long as their longest entry.
pub(crate) const ADD_PRESENCE: &str = r#"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now_ms + ttl, ARGV[1])
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
return 1
"#;

/// Everyone present, dropping expired entries first. KEYS: presence hash, expiry set.
/// Returns the codec bytes of each entry. Writes nothing for a channel without presence.
pub(crate) const PRESENCE: &str = r#"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms)
for _, client in ipairs(gone) do
  redis.call('HDEL', KEYS[1], client)
  redis.call('ZREM', KEYS[2], client)
end
return redis.call('HVALS', KEYS[1])
"#;

/// Remove one presence entry. KEYS: presence hash, expiry set. ARGV: client id.
pub(crate) const REMOVE_PRESENCE: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"#;

/// The scripts, each hashed once.
pub(crate) struct Scripts {
    pub(crate) publish: Script,
    pub(crate) history: Script,
    pub(crate) stream_position: Script,
    pub(crate) keep_stream: Script,
    pub(crate) map_publish: Script,
    pub(crate) map_state: Script,
    pub(crate) add_presence: Script,
    pub(crate) presence: Script,
    pub(crate) remove_presence: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            publish: Script::new(PUBLISH),
            history: Script::new(HISTORY),
            stream_position: Script::new(STREAM_POSITION),
            keep_stream: Script::new(KEEP_STREAM),
            map_publish: Script::new(MAP_PUBLISH),
            map_state: Script::new(MAP_STATE),
            add_presence: Script::new(ADD_PRESENCE),
            presence: Script::new(PRESENCE),
            remove_presence: Script::new(REMOVE_PRESENCE),
        }
    }
}
