// Inline form validation with the same words the API uses in its 422 `fields` messages
// (pydantic's), so the user sees one vocabulary. The API stays the judge: its messages
// replace these when it disagrees.

export const MESSAGES = {
  required: "Field required",
  ip: "value is not a valid IPv4 or IPv6 address",
  int: "Input should be a valid integer, unable to parse string as an integer",
  fraction: "Input should be a valid integer, got a number with a fractional part",
  portMin: "Input should be greater than or equal to 1",
  portMax: "Input should be less than or equal to 65535",
  protocol: "Input should be 'tcp' or 'udp'",
  number: "Input should be a valid number, unable to parse string as a number",
  timeoutMin: "Input should be greater than 0",
  timeoutMax: "Input should be less than or equal to 60",
};

// Python's ipaddress: four decimal octets 0-255, no leading zeros.
const OCTET = "(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)";
const IPV4 = new RegExp(`^${OCTET}(\\.${OCTET}){3}$`);

function isIpv6(value) {
  // Python accepts a scope id (fe80::1%eth0); the browser's URL parser checks the rest.
  const [addr, ...scope] = value.split("%");
  if (!addr.includes(":") || scope.length > 1 || (scope.length && !scope[0])) return false;
  try {
    return new URL(`http://[${addr}]/`).hostname.startsWith("[");
  } catch {
    return false;
  }
}

/** "" when valid, else the API's message. */
export function validateIp(value) {
  if (!value) return MESSAGES.required;
  return IPV4.test(value) || isIpv6(value) ? "" : MESSAGES.ip;
}

export function validatePort(value) {
  if (!value) return MESSAGES.required;
  if (/^[+-]?\d+\.\d*[1-9]\d*$/.test(value)) return MESSAGES.fraction;
  if (!/^[+-]?\d+(\.0*)?$/.test(value)) return MESSAGES.int;
  const n = Number.parseInt(value, 10);
  if (n < 1) return MESSAGES.portMin;
  if (n > 65535) return MESSAGES.portMax;
  return "";
}

export function validateProtocol(value) {
  return value === "tcp" || value === "udp" ? "" : MESSAGES.protocol;
}

export function validateTimeout(value) {
  if (!value) return "";
  const n = Number(value);
  if (!Number.isFinite(n)) return MESSAGES.number;
  if (n <= 0) return MESSAGES.timeoutMin;
  if (n > 60) return MESSAGES.timeoutMax;
  return "";
}

/** {errors: {inputId: message}, request} for the form's values. */
export function validateForm(v) {
  const errors = {};
  const checks = { src: validateIp(v.src), dst: validateIp(v.dst), port: validatePort(v.port),
                   protocol: validateProtocol(v.protocol), "collect-timeout": validateTimeout(v.collect_timeout_s) };
  for (const [k, msg] of Object.entries(checks)) if (msg) errors[k] = msg;
  const request = { src: v.src, dst: v.dst, port: Number.parseInt(v.port, 10), protocol: v.protocol,
                    options: { check_reply: v.check_reply, live: Boolean(v.live) } };
  if (v.collect_timeout_s) request.options.collect_timeout_s = Number(v.collect_timeout_s);
  return { errors, request };
}
