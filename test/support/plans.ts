/** A node of an `EXPLAIN (FORMAT JSON)` plan, with the fields tests read. */
export interface PlanNode {
  'Node Type': string;
  'Subplan Name'?: string;
  'Relation Name'?: string;
  'Actual Rows'?: number;
  Plans?: PlanNode[];
}

/** The node and every node under it. */
export const planNodes = (node: PlanNode): PlanNode[] => [node, ...(node.Plans ?? []).flatMap(planNodes)];

/** The root of the plan an `EXPLAIN (FORMAT JSON)` answered, given its rows. */
export const planRoot = (rows: Array<Record<string, unknown>>): PlanNode =>
  (rows[0]!['QUERY PLAN'] as Array<{ Plan: PlanNode }>)[0]!.Plan;
