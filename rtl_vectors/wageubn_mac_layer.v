// One WAGEUBN layer datapath, the reference for the engine's conv/linear/ReLU output stage
// (docs/arithmetic.md section 9):
//
//   start:  acc <= bias << cfg_bias_shift                (the accumulator is preloaded)
//   each valid cycle:  acc <= fit(acc + ((x * w) << cfg_prod_shift))
//                      fit = saturate to ACC_BITS (cfg_acc_sat) or keep the low ACC_BITS bits
//   after the last MAC: out = fit_out(relu?(round_half_even(acc / 2**cfg_out_shift)))
//                      fit_out = symmetric saturation to +-(2**(OUT_BITS-1) - 1)
//
// Widths are parameters; shifts and modes are configuration inputs, as a layer sequencer
// would set them. All arithmetic is two's complement.
`timescale 1ns / 1ps

module wageubn_mac_layer #(
    parameter IN_BITS  = 24,
    parameter W_BITS   = 16,
    parameter ACC_BITS = 48,
    parameter OUT_BITS = 32
) (
    input  wire                        clk,
    input  wire                        start,          // load the aligned bias
    input  wire signed [ACC_BITS-1:0]  bias,
    input  wire                        valid,          // one MAC this cycle
    input  wire signed [IN_BITS-1:0]   x,
    input  wire signed [W_BITS-1:0]    w,
    input  wire [5:0]                  cfg_bias_shift,
    input  wire [5:0]                  cfg_prod_shift,
    input  wire [5:0]                  cfg_out_shift,
    input  wire                        cfg_acc_sat,    // 1: saturate, 0: wrap
    input  wire                        cfg_relu,
    output reg  signed [ACC_BITS-1:0]  acc,
    output wire signed [OUT_BITS-1:0]  out
);
    localparam signed [ACC_BITS:0] ACC_MAX = (1 <<< (ACC_BITS - 1)) - 1;
    localparam signed [ACC_BITS:0] ACC_MIN = -(1 <<< (ACC_BITS - 1));

    // one guard bit: |acc| < 2**(ACC_BITS-1) and |product| < 2**(ACC_BITS-1) sum to ACC_BITS+1 bits
    wire signed [ACC_BITS-1:0] product = ($signed(x) * $signed(w)) <<< cfg_prod_shift;
    wire signed [ACC_BITS:0]   sum = {acc[ACC_BITS-1], acc} + {product[ACC_BITS-1], product};
    wire signed [ACC_BITS-1:0] fitted =
        !cfg_acc_sat      ? sum[ACC_BITS-1:0] :
        (sum > ACC_MAX)   ? ACC_MAX[ACC_BITS-1:0] :
        (sum < ACC_MIN)   ? ACC_MIN[ACC_BITS-1:0] : sum[ACC_BITS-1:0];

    always @(posedge clk) begin
        if (start)
            acc <= bias <<< cfg_bias_shift;
        else if (valid)
            acc <= fitted;
    end

    // Output stage: arithmetic shift (floor), then round half to even on the dropped bits.
    wire signed [ACC_BITS-1:0] floor_q = acc >>> cfg_out_shift;
    wire [ACC_BITS-1:0] low_mask = (cfg_out_shift == 0) ? {ACC_BITS{1'b0}}
                                   : ({{(ACC_BITS-1){1'b0}}, 1'b1} << cfg_out_shift) - 1;
    wire [ACC_BITS-1:0] half     = (cfg_out_shift == 0) ? {ACC_BITS{1'b0}}
                                   : {{(ACC_BITS-1){1'b0}}, 1'b1} << (cfg_out_shift - 1);
    wire [ACC_BITS-1:0] remainder = acc & low_mask;
    wire round_up = (cfg_out_shift != 0) &&
                    ((remainder > half) || ((remainder == half) && floor_q[0]));
    wire signed [ACC_BITS:0] rounded = {floor_q[ACC_BITS-1], floor_q} + round_up;
    wire signed [ACC_BITS:0] activated = (cfg_relu && rounded < 0) ? 0 : rounded;

    localparam signed [ACC_BITS:0] OUT_MAX = (1 <<< (OUT_BITS - 1)) - 1;
    assign out = (activated > OUT_MAX)  ? OUT_MAX[OUT_BITS-1:0] :
                 (activated < -OUT_MAX) ? -OUT_MAX[OUT_BITS-1:0] : activated[OUT_BITS-1:0];
endmodule
