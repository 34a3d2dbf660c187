import type { Json } from "./native";

/**
 * Checks that `value` survives a trip through JSON unchanged and returns its JSON form (what
 * `JSON.stringify` would write: `toJSON` applied, `undefined` properties left out). A BigInt,
 * function, symbol, non-finite number, cycle, or `undefined` in an array is a TypeError naming
 * its path (`args.user.ids[2]`), thrown before anything is written.
 */
export function toJson(value: unknown, path: string): Json {
  return walk(value, path, new Set());
}

function walk(value: unknown, path: string, seen: Set<object>): Json {
  if (value !== null && typeof value === "object" && typeof (value as { toJSON?: unknown }).toJSON === "function") {
    value = (value as { toJSON: (key: string) => unknown }).toJSON("");
  }
  switch (typeof value) {
    case "string":
    case "boolean":
      return value;
    case "number":
      if (!Number.isFinite(value)) {
        throw new TypeError(`${path} is ${value}, which JSON cannot represent (it would become null)`);
      }
      return value;
    case "bigint":
      throw new TypeError(`${path} is a BigInt, which JSON cannot represent; pass it as a string or a number`);
    case "function":
      throw new TypeError(`${path} is a function, which JSON cannot represent`);
    case "symbol":
      throw new TypeError(`${path} is a symbol, which JSON cannot represent`);
    case "undefined":
      throw new TypeError(`${path} is undefined, which JSON cannot represent (use null)`);
    case "object": {
      if (value === null) return null;
      if (seen.has(value)) {
        throw new TypeError(`${path} refers back to one of its parents (a cycle), which JSON cannot represent`);
      }
      seen.add(value);
      try {
        if (Array.isArray(value)) {
          return value.map((v, i) => walk(v, `${path}[${i}]`, seen));
        }
        if (value instanceof Map || value instanceof Set) {
          throw new TypeError(`${path} is a ${value.constructor.name}, which JSON writes as {}; pass an object or an array`);
        }
        const out: { [key: string]: Json } = {};
        for (const [k, v] of Object.entries(value)) {
          // JSON.stringify leaves an undefined property out, and an absent key reads back as
          // undefined: that round-trips. In an array it would become null: that does not.
          if (v === undefined) continue;
          out[k] = walk(v, /^[A-Za-z_$][\w$]*$/.test(k) ? `${path}.${k}` : `${path}[${JSON.stringify(k)}]`, seen);
        }
        return out;
      } finally {
        seen.delete(value);
      }
    }
    default:
      throw new TypeError(`${path} cannot be represented in JSON`);
  }
}
