const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Is `value` a UUID in its canonical text form (any version, either case), as PostgreSQL's uuid type prints it? */
export const isUuid = (value: string): boolean => UUID.test(value);
