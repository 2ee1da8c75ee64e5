//! The Lua scripts that make each multi-key step atomic in Redis. They are run by EVALSHA and
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

/// Start a stream if there is none (what a subscribe needs: an epoch the client can recover
/// against later). KEYS: meta, stream. ARGV: a fresh epoch, ttl ms (the short TTL of a stream
/// nobody published to; 0: never expires), the server's lineage (empty: not checked). Returns
/// `{offset, epoch}` as strings. A stream that exists in this lineage is read, and its TTL
/// extended to at least `ttl` (never shortened: a published stream keeps its meta TTL); one
/// last written under another lineage starts over under a new epoch, as in `PUBLISH`.
pub(crate) const STREAM_POSITION: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
local lineage = ARGV[3]
if epoch and lineage ~= '' then
  local written = redis.call('HGET', KEYS[1], 'r')
  if written and written ~= lineage then
    epoch = false
  end
end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  if lineage ~= '' then
    redis.call('HSET', KEYS[1], 'r', lineage)
  end
  local ttl = tonumber(ARGV[2])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
else
  local ttl = tonumber(ARGV[2])
  local left = redis.call('PTTL', KEYS[1])
  if ttl > 0 and left >= 0 and left < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
end
local offset = redis.call('HGET', KEYS[1], 'o') or '0'
return {tostring(offset), epoch}
"#;

/// Read a stream's position and extend its TTL to at least `ttl` (never shorten it; a key
/// with no TTL is left so), starting nothing: what a node's position check does for each
/// channel it has subscribers to, so that a stream a subscribe started lives while they do.
/// KEYS: meta. ARGV: ttl ms (0: extend nothing). Returns `{offset, epoch}` as strings
/// (`{"0", ""}` when there is no stream). PTTL and a compare rather than `PEXPIRE ... GT`,
/// which Redis 7 would need.
pub(crate) const KEEP_STREAM: &str = r#"
local meta = redis.call('HMGET', KEYS[1], 'o', 'e')
if not meta[1] then
  return {'0', ''}
end
local ttl = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if ttl > 0 and left >= 0 and left < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {meta[1], meta[2]}
"#;

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
            add_presence: Script::new(ADD_PRESENCE),
            presence: Script::new(PRESENCE),
            remove_presence: Script::new(REMOVE_PRESENCE),
        }
    }
}
