// A JSON transform: orders in, a summary per customer out.
//
//   taskhost run plugins/scripts/transform.js --input orders.json
//
// Input: {"orders": [{"id", "customer", "items": [{"sku", "qty", "price"}]}],
//         "currency": "EUR"}
// Output: {"currency", "customers": [{"customer", "orders", "items", "total"}]}
// sorted by total, largest first. Amounts are in cents, so sums are exact.
// A malformed order is a permanent error naming it: retrying cannot help.

export default function (input) {
  const { orders, currency = "EUR" } = input.json();
  if (!Array.isArray(orders)) throw new host.PermanentError("input.orders must be an array of orders");
  const byCustomer = new Map();
  for (const [i, order] of orders.entries()) {
    if (typeof order?.customer !== "string" || !Array.isArray(order.items)) {
      throw new host.PermanentError(`order ${i} (${JSON.stringify(order?.id)}) needs a customer and items`);
    }
    const entry = byCustomer.get(order.customer) ?? { customer: order.customer, orders: 0, items: 0, total: 0 };
    entry.orders += 1;
    for (const { qty, price } of order.items) {
      if (!Number.isInteger(qty) || !Number.isInteger(price)) {
        throw new host.PermanentError(`order ${JSON.stringify(order.id)}: qty and price must be integers (cents)`);
      }
      entry.items += qty;
      entry.total += qty * price;
    }
    byCustomer.set(order.customer, entry);
  }
  const customers = [...byCustomer.values()].sort((a, b) => b.total - a.total || a.customer.localeCompare(b.customer));
  console.log(`${orders.length} orders from ${customers.length} customers`);
  return { currency, customers };
}
