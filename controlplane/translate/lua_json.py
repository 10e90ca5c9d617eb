"""JSON body changes as a Lua script for Envoy's lua filter (which has no JSON library).

The script does not decode the JSON into Lua values: it walks the top-level object once,
keeping each member's value as the exact text it arrived as, then writes the members back
renamed or without the removed ones, and optionally wraps the result. Nested values are
never re-encoded, so numbers, unicode escapes and member order survive byte for byte, and
the Lua code stays small. A body that is not well-formed at the top level is passed on
unchanged (the walk returns nil).

Limits: only top-level members; keys are compared as written (a key spelled with
``\\u`` escapes does not match); bodies over ``max_bytes`` (by Content-Length) pass
unchanged; the body is buffered, within Envoy's per-stream buffer limit.
"""

from __future__ import annotations

from ..policy.traffic import BodyTransform

__all__ = ["LUA_JSON", "body_script"]

#: The walker shared by every generated script. ``transform(s, rename, remove, wrap)``
#: returns the new body or nil when ``s`` is not JSON it can handle.
LUA_JSON = r"""
local function ws(s, i) return s:find("[^ \t\r\n]", i) or #s + 1 end
local function str_end(s, i)
  local j = i + 1
  while true do
    local k = s:find('["\\]', j)
    if not k then return nil end
    if s:sub(k, k) == '"' then return k + 1 end
    j = k + 2
  end
end
local function value_end(s, i)
  local c = s:sub(i, i)
  if c == '"' then return str_end(s, i) end
  if c == "{" or c == "[" then
    local depth, j = 0, i
    while true do
      local k = s:find('[%[%]{}"]', j)
      if not k then return nil end
      local ch = s:sub(k, k)
      if ch == '"' then
        j = str_end(s, k)
        if not j then return nil end
      else
        depth = depth + ((ch == "{" or ch == "[") and 1 or -1)
        j = k + 1
        if depth == 0 then return j end
      end
    end
  end
  local k = s:find("[,}%] \t\r\n]", i) or #s + 1
  if k == i then return nil end
  return k
end
local function members(s)
  local i = ws(s, 1)
  if s:sub(i, i) ~= "{" then return nil end
  local out = {}
  i = ws(s, i + 1)
  if s:sub(i, i) == "}" then return out, i end
  while true do
    if s:sub(i, i) ~= '"' then return nil end
    local ke = str_end(s, i)
    if not ke then return nil end
    local key = s:sub(i + 1, ke - 2)
    i = ws(s, ke)
    if s:sub(i, i) ~= ":" then return nil end
    local vs = ws(s, i + 1)
    local ve = value_end(s, vs)
    if not ve then return nil end
    out[#out + 1] = {key, s:sub(vs, ve - 1)}
    i = ws(s, ve)
    local c = s:sub(i, i)
    if c == "}" then return out, i end
    if c ~= "," then return nil end
    i = ws(s, i + 1)
  end
end
local function transform(s, rename, remove, wrap)
  local list, last = members(s)
  local body
  if list then
    if ws(s, last + 1) <= #s then return nil end
    local parts = {}
    for _, m in ipairs(list) do
      if not remove[m[1]] then
        parts[#parts + 1] = '"' .. (rename[m[1]] or m[1]) .. '":' .. m[2]
      end
    end
    body = "{" .. table.concat(parts, ",") .. "}"
  else
    if not wrap then return nil end
    local i = ws(s, 1)
    local e = value_end(s, i)
    if not e or ws(s, e) <= #s then return nil end
    body = s:sub(i, e - 1)
  end
  if wrap then body = '{"' .. wrap .. '":' .. body .. "}" end
  return body
end
local function apply(handle, spec)
  local headers = handle:headers()
  local length = tonumber(headers:get("content-length") or "")
  if length == nil or length == 0 or length > spec.max then return end
  local ctype = headers:get("content-type") or ""
  if not ctype:lower():find("json", 1, true) then return end
  local body = handle:body()
  if body == nil then return end
  local out = transform(body:getBytes(0, body:length()), spec.rename, spec.remove, spec.wrap)
  if out == nil then return end
  body:setBytes(out)
  headers:replace("content-length", tostring(#out))
end
"""


def _lua_string(text: str) -> str:
    """A Lua string literal (the policy already refuses quotes, backslashes, controls)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _spec(transform: BodyTransform) -> str:
    # a renamed-to name that is already present is dropped, so the result has one member
    removed = set(transform.remove) | (set(transform.rename.values()) - set(transform.rename))
    rename = ", ".join(
        f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in sorted(transform.rename.items())
    )
    remove = ", ".join(f"[{_lua_string(k)}] = true" for k in sorted(removed))
    wrap = _lua_string(transform.wrap) if transform.wrap is not None else "nil"
    return (
        f"{{rename = {{{rename}}}, remove = {{{remove}}}, wrap = {wrap}, "
        f"max = {transform.max_bytes}}}"
    )


def body_script(request: BodyTransform | None, response: BodyTransform | None) -> str:
    """The route's Lua script: the shared walker plus its request and response changes."""
    parts = [LUA_JSON]
    if request is not None:
        parts.append(f"local REQUEST = {_spec(request)}\n")
        parts.append("function envoy_on_request(handle) apply(handle, REQUEST) end\n")
    if response is not None:
        parts.append(f"local RESPONSE = {_spec(response)}\n")
        parts.append("function envoy_on_response(handle) apply(handle, RESPONSE) end\n")
    return "".join(parts)
